from __future__ import annotations

from datetime import timedelta

import pytest

from podtask.api.durations import DurationError, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("10m", 600),
        ("1h30m", 5400),
        ("2w", 1209600),
        ("1d", 86400),
        ("250ms", 0.25),
        ("1.5h", 5400),
        ("1h0m30s", 3630),
    ],
)
def test_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "10", "m", "ten minutes", "1h 30m", "-5s", "5 s", "1y"])
def test_reject(text: str) -> None:
    with pytest.raises(DurationError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize("seconds", [0, 0.25, 1, 59, 90, 3600, 5400, 90061, 1209600])
def test_format_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)).total_seconds() == seconds


def test_format_is_canonical() -> None:
    assert format_duration(5400) == "1h30m"
    assert format_duration(timedelta(milliseconds=1500)) == "1s500ms"
