"""One clear error when an integration's framework is not installed."""

from __future__ import annotations

import importlib

__all__ = ["require"]


def require(module: str, extra: str) -> None:
    """Import ``module`` or raise an ``ImportError`` that names the extra to install."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"ollama_asgi.contrib.{extra} needs {module!r}, which is not installed: pip install 'ollama-asgi[{extra}]'"
        ) from exc
