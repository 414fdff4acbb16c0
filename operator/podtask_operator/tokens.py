"""Per-run tokens for the run API.

A run pod proves which run it belongs to with a bearer token (DESIGN §5)::

    token = base64url(HMAC-SHA256(key, f"{namespace}/{name}/{uid}"))   # no padding

The token is derived, not stored: the operator can re-issue or check it at any time from
the run's identity and one key, so nothing has to be written per run and a restarted
operator still accepts the tokens of pods started before the restart.  Binding the uid
means a TaskRun deleted and re-created under the same name gets a different token, so a
leftover pod of the old run cannot report into the new one.

The key lives in a Secret in the operator's namespace (:func:`load_or_create_key`).
Rotating it (delete the Secret, restart the operator) invalidates every token in flight.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import secrets
from typing import Any, Final

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

logger = logging.getLogger(__name__)

MIN_KEY_BYTES: Final = 32
SECRET_KEY_FIELD: Final = "key"

TOKEN_LENGTH: Final = 43
"""Characters in a token: 32 bytes of HMAC-SHA256 in unpadded base64url."""

_TOKEN_RE: Final = re.compile(rf"[A-Za-z0-9_-]{{{TOKEN_LENGTH}}}")


def is_well_formed(token: str) -> bool:
    """Whether ``token`` has the shape of a token (says nothing about its validity)."""
    return _TOKEN_RE.fullmatch(token) is not None


class RunTokens:
    """Issues and checks run tokens under one key."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"run token key must be at least {MIN_KEY_BYTES} bytes")
        self._key = bytes(key)

    def _digest(self, namespace: str, name: str, uid: str) -> bytes:
        # Kubernetes names, namespaces and uids never contain "/", so the joined
        # message is unambiguous.
        message = f"{namespace}/{name}/{uid}".encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def issue(self, namespace: str, name: str, uid: str) -> str:
        digest = self._digest(namespace, name, uid)
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def verify(self, token: str, namespace: str, name: str, uid: str) -> bool:
        expected = self.issue(namespace, name, uid).encode("ascii")
        # Compare bytes: compare_digest refuses non-ASCII str, and the token is
        # caller-controlled ("replace" cannot make a match: the expected token is pure
        # base64url).  Always compare, even for a malformed token, so the time taken does
        # not depend on how the token is wrong.
        return hmac.compare_digest(expected, token.encode("utf-8", "replace"))

    def __repr__(self) -> str:
        return "RunTokens(key=<hidden>)"


async def load_or_create_key(api: Any, namespace: str, secret_name: str) -> bytes:
    """The token key from Secret ``namespace/secret_name`` (field ``key``), created if absent.

    ``api`` is a ``kubernetes_asyncio.client.CoreV1Api``.  Creation is create-if-absent: when
    two operator replicas start at once, the loser of the race gets 409 and reads the
    winner's key, so both sign with the same key.  An existing Secret without a usable key
    is an error rather than being overwritten: replacing the key would invalidate the token
    of every running pod, and the Secret may belong to someone else.
    """
    try:
        secret = await api.read_namespaced_secret(secret_name, namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise
    else:
        return _key_from_secret(secret, namespace, secret_name)

    key = secrets.token_bytes(MIN_KEY_BYTES)
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(
            name=secret_name,
            namespace=namespace,
            labels={"app.kubernetes.io/managed-by": "podtask-operator"},
        ),
        type="Opaque",
        data={SECRET_KEY_FIELD: base64.b64encode(key).decode("ascii")},
    )
    try:
        await api.create_namespaced_secret(namespace, body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        secret = await api.read_namespaced_secret(secret_name, namespace)
        return _key_from_secret(secret, namespace, secret_name)
    logger.info("created run token key Secret %s/%s", namespace, secret_name)
    return key


def _key_from_secret(secret: Any, namespace: str, secret_name: str) -> bytes:
    data = getattr(secret, "data", None) or {}
    encoded = data.get(SECRET_KEY_FIELD)
    where = f"Secret {namespace}/{secret_name}"
    if not encoded:
        raise RuntimeError(f"{where} has no {SECRET_KEY_FIELD!r} field")
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RuntimeError(f"{where}: field {SECRET_KEY_FIELD!r} is not base64") from exc
    if len(key) < MIN_KEY_BYTES:
        raise RuntimeError(
            f"{where}: field {SECRET_KEY_FIELD!r} holds {len(key)} bytes, "
            f"need at least {MIN_KEY_BYTES}"
        )
    return key
