"""Model names as Ollama reads them: which are valid, their lookup form, and which run on ollama.com.

Every request names a model and several steps ask about it (placement, loads, accounting, policy),
so the checks and the canonical form are memoised per name, in memos bounded because names come
from clients.
"""

from __future__ import annotations

import re

import orjson

from ollama_asgi.errors import GatewayError
from ollama_asgi.json_types import json_type_name

__all__ = ["canonical_model", "check_model_name", "check_model_source", "is_cloud_model"]

# [host[:port]/][namespace/]model[:tag] as Ollama accepts it; no empty, "." or ".." segments.
_MODEL_NAME = re.compile(
    r"[A-Za-z0-9_][A-Za-z0-9_.\-]*(?::[0-9]+)?(?:/[A-Za-z0-9_][A-Za-z0-9_.\-]*){0,2}(?::[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127})?"
    r"(?::(?i:cloud|local))?"  # Ollama's source suffix after a tag: m:tag:cloud, m:tag:local
)
_MAX_MODEL_LEN = 350

_CANONICAL: dict[str, str] = {}
_CANONICAL_MAX = 4096  # names come from clients: the memo is bounded


def _bad(message: str) -> GatewayError:
    return GatewayError(400, message)


def canonical_model(name: str) -> str:
    """Ollama's lookup form: lower case, ``:latest`` when no tag is given, no ``:local`` suffix
    (it only forces the local model, the one ``/api/ps`` and allow-lists name).

    Memoised: every request asks for it several times (placement, loads, accounting).
    """
    found = _CANONICAL.get(name)
    if found is not None:
        return found
    lowered = name.lower()
    if lowered.endswith(":local"):
        lowered = lowered[:-6]
    last = lowered.rsplit("/", 1)[-1]
    found = lowered if ":" in last else lowered + ":latest"
    if len(_CANONICAL) >= _CANONICAL_MAX:
        _CANONICAL.clear()
    _CANONICAL[name] = found
    return found


_VALID_NAMES: set[str] = set()  # names that passed, so the pattern runs once per name (bounded)


def check_model_name(name: object) -> str:
    """``name`` when Ollama would take it as a model name; a 400 naming what is wrong otherwise."""
    if name.__class__ is str and name in _VALID_NAMES:
        return name
    if not isinstance(name, str):
        raise _bad(f"model must be a string, got {json_type_name(name)}")
    if not name:
        raise _bad("model is required")
    if len(name) > _MAX_MODEL_LEN or not _MODEL_NAME.fullmatch(name) or ".." in name:
        raise _bad(f"invalid model name {name[:100]!r}")
    if len(_VALID_NAMES) >= _CANONICAL_MAX:
        _VALID_NAMES.clear()
    _VALID_NAMES.add(name)
    return name


def _source_suffix(name: str) -> tuple[str, str | None]:
    """``(base, "cloud" | "local" | None)`` as Ollama's ``modelref`` reads the last ``:`` suffix."""
    head, sep, suffix = name.rpartition(":")
    if sep:
        lowered = suffix.lower()
        if lowered in ("cloud", "local"):
            return head, lowered
        if "/" not in suffix and lowered.endswith("-cloud"):
            return name[: -len("-cloud")], "cloud"
    return name, None


def is_cloud_model(name: str) -> bool:
    """True for names Ollama relays to ollama.com: ``m:cloud``, ``m:tag:cloud``, ``m:tag-cloud``.

    ``:local`` forces a local model, so ``m:tag-cloud:local`` is not one.
    """
    return _source_suffix(name)[1] == "cloud"


def check_model_source(name: str) -> bool:
    """Whether ``name`` is a cloud model; a 400 for both ``:cloud`` and ``:local``, as Ollama refuses it."""
    base, source = _source_suffix(name)
    if source is None:
        return False
    if _source_suffix(base)[1] is not None:
        raise _bad(f"use either :local or :cloud, not both: {orjson.dumps(name).decode()}")  # Ollama's words
    return source == "cloud"
