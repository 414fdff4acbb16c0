"""A small asyncio client for the few Kubernetes REST calls the node agent makes.

aiohttp straight against the API keeps watch streams, patch content types and error
codes explicit, and one connection pool serves hundreds of pods without a thread each.
"""

from __future__ import annotations

import base64
import json
import ssl
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import yaml

Obj = dict[str, Any]

STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"


class ApiError(Exception):
    def __init__(self, status: int, body: str, method: str, path: str) -> None:
        self.status = status
        self.body = body
        try:
            self.reason = str(json.loads(body).get("reason", ""))
        except (ValueError, AttributeError):
            self.reason = ""
        super().__init__(f"{method} {path}: HTTP {status}: {body[:300]}")


class GoneError(Exception):
    """A watch's resourceVersion is too old (HTTP 410 or an ERROR event with code 410)."""


def _ssl_context(cluster: Obj, user: Obj, base_dir: Path) -> ssl.SSLContext | None:
    def material(key: str) -> bytes | None:
        if cluster.get(f"{key}-data") or user.get(f"{key}-data"):
            return base64.b64decode(cluster.get(f"{key}-data") or user[f"{key}-data"])
        path = cluster.get(key) or user.get(key)
        return (base_dir / path).read_bytes() if path else None

    if not str(cluster["server"]).startswith("https"):
        return None
    context = ssl.create_default_context()
    if cluster.get("insecure-skip-tls-verify"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        ca = material("certificate-authority")
        if ca:
            context.load_verify_locations(cadata=ca.decode())
    cert, key = material("client-certificate"), material("client-key")
    if cert and key:
        # load_cert_chain only reads files; they are removed as soon as they are loaded.
        with tempfile.TemporaryDirectory() as tmp:
            cert_file, key_file = Path(tmp) / "client.crt", Path(tmp) / "client.key"
            cert_file.write_bytes(cert)
            key_file.write_bytes(key)
            context.load_cert_chain(str(cert_file), str(key_file))
    return context


class Kube:
    def __init__(self, kubeconfig: Path) -> None:
        config = yaml.safe_load(kubeconfig.read_text())
        context_name = config.get("current-context")
        context = next(
            c["context"]
            for c in config["contexts"]
            if c["name"] == context_name or context_name is None
        )
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user: Obj = next(
            (u["user"] for u in config.get("users") or [] if u["name"] == context.get("user")), {}
        )
        self.server = str(cluster["server"]).rstrip("/")
        self._ssl = _ssl_context(cluster, user, kubeconfig.parent)
        self._headers = {"Accept": "application/json"}
        if user.get("token"):
            self._headers["Authorization"] = f"Bearer {user['token']}"
        self._session: aiohttp.ClientSession | None = None

    @property
    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.server)
        return parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)

    async def __aenter__(self) -> Kube:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl if self._ssl else False, limit=64),
            headers=self._headers,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use `async with Kube(...)`")
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        seconds: float = 30.0,
    ) -> Any:
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else {}
        async with self.session.request(
            method,
            self.server + path,
            data=data,
            params=params,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=seconds),
        ) as response:
            text = await response.text()
            if response.status >= 400:
                raise ApiError(response.status, text, method, path)
            return json.loads(text) if text else None

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        return await self.request("GET", path, params=params)

    async def get_or_none(self, path: str) -> Obj | None:
        try:
            found: Obj = await self.get(path)
        except ApiError as error:
            if error.status == 404:
                return None
            raise
        return found

    async def patch(self, path: str, body: Any, content_type: str = STRATEGIC) -> Any:
        return await self.request("PATCH", path, body=body, content_type=content_type)

    async def watch(self, path: str, params: Mapping[str, str]) -> AsyncIterator[Obj]:
        """Events of one watch request; raises GoneError when the resourceVersion expired."""
        query = {**params, "watch": "true", "allowWatchBookmarks": "true"}
        async with self.session.get(
            self.server + path,
            params=query,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None),
        ) as response:
            if response.status == 410:
                raise GoneError()
            if response.status >= 400:
                raise ApiError(response.status, await response.text(), "WATCH", path)
            async for line in response.content:
                if not line.strip():
                    continue
                event: Obj = json.loads(line)
                if event.get("type") == "ERROR":
                    if (event.get("object") or {}).get("code") == 410:
                        raise GoneError()
                    raise ApiError(
                        int((event.get("object") or {}).get("code") or 500),
                        json.dumps(event.get("object")),
                        "WATCH",
                        path,
                    )
                yield event
