"""Options and keep_alive, read as Ollama reads them."""

from __future__ import annotations

import pytest

from ollama_asgi.errors import GatewayError
from ollama_asgi.options import parse_keep_alive


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (3600, 3600.0),
        (1.5, 1.5),
        ("10m", 600.0),
        ("-1", None),
        ("-1m", -60.0),
        (0, 0.0),
        ("0", 0.0),
        ("+5m", 300.0),
        (" 5m", None),
    ],
)
def test_keep_alive_is_read_like_ollama(value: object, seconds: float | None) -> None:
    if seconds is None:
        with pytest.raises(GatewayError):
            parse_keep_alive(value)
    else:
        assert parse_keep_alive(value) == seconds
