from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from podtask_operator.tokens import (
    TOKEN_LENGTH,
    RunTokens,
    is_well_formed,
    load_or_create_key,
)

KEY = bytes(range(32))
UID = "0f8c3b1e-5d7a-4c2b-9e61-2a4f7d9b3c10"


def reference_token(key: bytes, namespace: str, name: str, uid: str) -> str:
    """The token as the spec defines it, computed independently of RunTokens."""
    digest = hmac.new(key, f"{namespace}/{name}/{uid}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def test_issue_matches_the_specified_construction() -> None:
    token = RunTokens(KEY).issue("team-a", "run-1", UID)
    assert token == reference_token(KEY, "team-a", "run-1", UID)
    assert len(token) == TOKEN_LENGTH
    assert "=" not in token
    assert is_well_formed(token)


def test_verify_accepts_own_token_and_survives_a_restart() -> None:
    token = RunTokens(KEY).issue("team-a", "run-1", UID)
    # A new instance with the same key stands for a restarted operator.
    assert RunTokens(bytes(KEY)).verify(token, "team-a", "run-1", UID)


@pytest.mark.parametrize(
    ("namespace", "name", "uid"),
    [
        ("team-b", "run-1", UID),
        ("team-a", "run-2", UID),
        # Same name re-created: a leftover pod of the old run must not pass.
        ("team-a", "run-1", "0f8c3b1e-5d7a-4c2b-9e61-2a4f7d9b3c11"),
    ],
)
def test_verify_rejects_token_of_another_run(namespace: str, name: str, uid: str) -> None:
    tokens = RunTokens(KEY)
    token = tokens.issue("team-a", "run-1", UID)
    assert not tokens.verify(token, namespace, name, uid)


def test_verify_rejects_token_under_another_key() -> None:
    token = RunTokens(b"k" * 32).issue("team-a", "run-1", UID)
    assert not RunTokens(KEY).verify(token, "team-a", "run-1", UID)


def test_verify_rejects_every_single_character_change() -> None:
    tokens = RunTokens(KEY)
    token = tokens.issue("team-a", "run-1", UID)
    for i, char in enumerate(token):
        replacement = "A" if char != "A" else "B"
        tampered = token[:i] + replacement + token[i + 1 :]
        assert not tokens.verify(tampered, "team-a", "run-1", UID), i


@pytest.mark.parametrize(
    "tampered",
    [
        "",
        "x",
        "padded=",
        "é" * TOKEN_LENGTH,
        "\udcff" * TOKEN_LENGTH,
        "\ud800",
    ],
)
def test_verify_rejects_malformed_tokens_without_raising(tampered: str) -> None:
    assert not RunTokens(KEY).verify(tampered, "team-a", "run-1", UID)


def test_verify_rejects_truncated_and_padded_tokens() -> None:
    tokens = RunTokens(KEY)
    token = tokens.issue("team-a", "run-1", UID)
    assert not tokens.verify(token[:-1], "team-a", "run-1", UID)
    assert not tokens.verify(token + "=", "team-a", "run-1", UID)
    assert not tokens.verify(token + "A", "team-a", "run-1", UID)


def test_well_formed_is_only_about_shape() -> None:
    assert is_well_formed("A" * TOKEN_LENGTH)
    assert not is_well_formed("A" * (TOKEN_LENGTH - 1))
    assert not is_well_formed("A" * (TOKEN_LENGTH + 1))
    assert not is_well_formed("+" * TOKEN_LENGTH)
    assert not is_well_formed("A" * (TOKEN_LENGTH - 1) + "\n")


def test_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="32"):
        RunTokens(b"k" * 31)


def test_repr_hides_the_key() -> None:
    assert KEY.hex() not in repr(RunTokens(KEY))
    assert str(KEY) not in repr(RunTokens(KEY))


# --- load_or_create_key -------------------------------------------------------------------


class FakeSecret:
    def __init__(self, data: dict[str, str] | None) -> None:
        self.data = data


class FakeCoreV1:
    """The two CoreV1Api calls load_or_create_key makes, over a dict of Secrets."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict[str, str] | None] = {}
        self.created: list[Any] = []
        # Someone else's Secret that appears between our read and our create.
        self.race_winner: dict[str, str] | None = None
        self.read_error: int | None = None

    async def read_namespaced_secret(self, name: str, namespace: str) -> FakeSecret:
        if self.read_error is not None:
            raise ApiException(status=self.read_error, reason="boom")
        if (namespace, name) not in self.secrets:
            raise ApiException(status=404, reason="Not Found")
        return FakeSecret(self.secrets[(namespace, name)])

    async def create_namespaced_secret(self, namespace: str, body: Any) -> Any:
        name = body.metadata.name
        if self.race_winner is not None:
            self.secrets[(namespace, name)] = self.race_winner
        if (namespace, name) in self.secrets:
            raise ApiException(status=409, reason="Conflict")
        self.created.append(body)
        self.secrets[(namespace, name)] = body.data
        return body


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


async def test_load_existing_key() -> None:
    api = FakeCoreV1()
    api.secrets[("podtask", "run-api-key")] = {"key": b64(KEY)}
    assert await load_or_create_key(api, "podtask", "run-api-key") == KEY
    assert api.created == []


async def test_create_key_when_absent_and_read_it_back() -> None:
    api = FakeCoreV1()
    key = await load_or_create_key(api, "podtask", "run-api-key")
    assert len(key) == 32
    assert len(api.created) == 1
    created = api.created[0]
    assert created.metadata.namespace == "podtask"
    assert created.data == {"key": b64(key)}
    # The next start (a restart) reads the same key instead of making a new one.
    assert await load_or_create_key(api, "podtask", "run-api-key") == key
    assert len(api.created) == 1


async def test_two_fresh_creations_differ() -> None:
    first = await load_or_create_key(FakeCoreV1(), "podtask", "k")
    second = await load_or_create_key(FakeCoreV1(), "podtask", "k")
    assert first != second


async def test_create_race_adopts_the_winners_key() -> None:
    api = FakeCoreV1()
    winner = bytes(reversed(range(32)))
    api.race_winner = {"key": b64(winner)}
    assert await load_or_create_key(api, "podtask", "run-api-key") == winner
    assert api.created == []


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (None, "no 'key' field"),
        ({"other": b64(KEY)}, "no 'key' field"),
        ({"key": "not base64!"}, "not base64"),
        ({"key": b64(b"short")}, "5 bytes"),
    ],
)
async def test_unusable_existing_secret_is_an_error_not_overwritten(
    data: dict[str, str] | None, match: str
) -> None:
    api = FakeCoreV1()
    api.secrets[("podtask", "run-api-key")] = data
    with pytest.raises(RuntimeError, match=match):
        await load_or_create_key(api, "podtask", "run-api-key")
    assert api.created == []
    assert api.secrets[("podtask", "run-api-key")] == data


async def test_other_read_errors_propagate() -> None:
    api = FakeCoreV1()
    api.read_error = 403
    with pytest.raises(ApiException) as info:
        await load_or_create_key(api, "podtask", "run-api-key")
    assert info.value.status == 403
    assert api.created == []
