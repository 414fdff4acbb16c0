"""The kubelet's container-log endpoint, so `kubectl logs` works through the API server.

The API server proxies ``GET /containerLogs/{ns}/{pod}/{container}`` to the node's
address and ``daemonEndpoints.kubeletEndpoint.Port`` over HTTPS; it is started without
``--kubelet-certificate-authority``, so a throw-away self-signed certificate is enough.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

FOLLOW_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class LogTarget:
    path: Path
    start: int  # byte offset where the requested container instance begins
    end: int | None  # None: up to the end of the file (the current instance)
    running: Callable[[], bool]  # whether a follow should keep waiting for more


class LogError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# (namespace, pod, container, previous) -> target, or LogError
Locator = Callable[[str, str, str, bool], LogTarget]


def self_signed(directory: Path, name: str) -> ssl.SSLContext:
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name}@process-kubelet")])
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(name),
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "kubelet.crt", directory / "kubelet.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert_path), str(key_path))
    return context


def _tail_offset(path: Path, start: int, end: int, lines: int) -> int:
    """Offset where the last ``lines`` lines of path[start:end] begin."""
    if lines <= 0:
        return end
    with path.open("rb") as log:
        position = end
        found = 0
        block = 64 * 1024
        # A final newline ends the last line rather than starting an empty one.
        log.seek(max(end - 1, start))
        if end > start and log.read(1) == b"\n":
            position = end - 1
        while position > start:
            read_from = max(start, position - block)
            log.seek(read_from)
            chunk = log.read(position - read_from)
            index = len(chunk)
            while True:
                index = chunk.rfind(b"\n", 0, index)
                if index == -1:
                    break
                found += 1
                if found == lines:
                    return read_from + index + 1
            position = read_from
        return start


def _size(path: Path) -> int:
    """The file's size, -1 if there is no file."""
    try:
        return path.stat().st_size
    except OSError:
        return -1


def _query_int(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError as error:
        raise web.HTTPBadRequest(text=f"invalid {name}: {raw}") from error


def make_app(locate: Locator) -> web.Application:
    async def container_logs(request: web.Request) -> web.StreamResponse:
        info = request.match_info
        follow = request.query.get("follow") in {"true", "1"}
        previous = request.query.get("previous") in {"true", "1"}
        tail = _query_int(request, "tailLines")
        limit = _query_int(request, "limitBytes")
        try:
            target = locate(info["namespace"], info["pod"], info["container"], previous)
        except LogError as error:
            return web.Response(status=error.status, text=str(error))
        size = await asyncio.to_thread(_size, target.path)
        if size < 0:
            # A container that never started (StartError) has no log file at all.
            return web.Response(text="", content_type="text/plain")
        end = size if target.end is None else min(target.end, size)
        offset = target.start
        if tail is not None:
            offset = await asyncio.to_thread(_tail_offset, target.path, target.start, end, tail)
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        sent = 0
        following = follow and target.end is None
        with target.path.open("rb") as log:
            log.seek(offset)
            while True:
                chunk = (
                    log.read(64 * 1024)
                    if target.end is None
                    else log.read(max(0, min(64 * 1024, end - log.tell())))
                )
                if limit is not None:
                    chunk = chunk[: max(0, limit - sent)]
                if chunk:
                    await response.write(chunk)
                    sent += len(chunk)
                    if limit is not None and sent >= limit:
                        break
                    continue
                if not following or not target.running():
                    # One more read catches output written just before the exit.
                    if following:
                        following = False
                        continue
                    break
                await asyncio.sleep(FOLLOW_POLL_SECONDS)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", container_logs)
    return app


async def serve(
    locate: Locator, context: ssl.SSLContext, host: str = "127.0.0.1"
) -> tuple[web.AppRunner, int]:
    """Start the HTTPS log server on a free port; returns the runner and the port.

    Several agents share 127.0.0.1, so each binds its own ephemeral port.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    runner = web.AppRunner(make_app(locate), access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock, ssl_context=context).start()
    return runner, int(sock.getsockname()[1])
