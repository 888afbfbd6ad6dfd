from __future__ import annotations

import pytest

from ollama_asgi.durations import go_duration, parse_duration
from ollama_asgi.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30", 30.0), (2.5, 2.5), ("30s", 30.0), ("5m", 300.0), ("1h30m", 5400.0), ("250ms", 0.25), ("1.5s", 1.5)],
)
def test_durations_accept_numbers_and_go_style_units(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5 minutes", "m5", "-3s", "1h-2m", True, None, "nan"])
def test_bad_durations_are_rejected(text: object) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text, field="queue_timeout")


@pytest.mark.parametrize(("text", "written"), [("30m", "30m"), (" 300 ", "300s"), ("-1", "-1s"), ("1.5", "1.5s")])
def test_a_keep_alive_is_written_as_ollama_reads_it(text: str, written: str) -> None:
    assert go_duration(text, "keep_alive") == written
