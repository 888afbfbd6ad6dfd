"""Settings from the Django settings module, read once and dropped when ``setting_changed`` fires.

``OLLAMA_ASGI`` is a dict of the gateway's settings (``Settings.from_mapping``: ``upstreams``,
``api_keys``, ``parallel``...; keys are case-insensitive) or a ``Settings`` object. ``OLLAMA_ASGI_MODEL_GROUPS`` maps Django group names to the model
patterns their members may use, e.g. ``{"llm-users": ["llama3.2*", "qwen2.5*"]}``; when it is
absent every authenticated user may use every model.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from django.conf import settings as django_settings  # type: ignore[import-untyped]

from ollama_asgi.errors import ConfigError
from ollama_asgi.gateway import OllamaGateway
from ollama_asgi.settings import Settings

__all__ = [
    "MODEL_GROUPS",
    "SETTING",
    "built_gateway",
    "gateway",
    "load_settings",
    "model_groups",
    "parse_model_groups",
    "reset",
    "settings",
]

SETTING = "OLLAMA_ASGI"
MODEL_GROUPS = "OLLAMA_ASGI_MODEL_GROUPS"

ModelGroups = dict[str, tuple[str, ...]]

_lock = threading.RLock()  # gateway() builds settings() while holding it
_cache: dict[str, Any] = {}


def parse_model_groups(value: object) -> ModelGroups | None:
    """Validate ``OLLAMA_ASGI_MODEL_GROUPS``: group name to a list (or comma-separated string) of patterns."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError(MODEL_GROUPS, f"expected a dict of group name to model patterns, got {type(value).__name__}")
    groups: ModelGroups = {}
    for name, patterns in value.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(MODEL_GROUPS, f"group names must be non-empty strings, got {name!r}")
        if isinstance(patterns, str):
            patterns = [p.strip() for p in patterns.split(",") if p.strip()]
        if not isinstance(patterns, list | tuple) or not all(isinstance(p, str) and p for p in patterns):
            raise ConfigError(MODEL_GROUPS, f"group {name!r}: expected a list of model patterns, got {patterns!r}")
        groups[name] = tuple(patterns)
    return groups


def _cached(key: str, build: Callable[[], Any]) -> Any:
    if key not in _cache:
        with _lock:
            if key not in _cache:
                _cache[key] = build()
    return _cache[key]


def load_settings(value: object) -> Settings:
    """``OLLAMA_ASGI`` as ``Settings``: a dict of settings, or a ``Settings`` built in the settings module."""
    if isinstance(value, Settings):
        return value
    return Settings.from_mapping(value)  # type: ignore[arg-type]  # from_mapping names a non-mapping itself


def settings() -> Settings:
    """The gateway's ``Settings`` from ``settings.OLLAMA_ASGI``; raises ``ConfigError`` naming a bad key."""
    result: Settings = _cached("settings", lambda: load_settings(getattr(django_settings, SETTING, {})))
    return result


def model_groups() -> ModelGroups | None:
    """``OLLAMA_ASGI_MODEL_GROUPS``, validated; None when it is not set (no model restriction)."""
    result: ModelGroups | None = _cached(
        "groups", lambda: parse_model_groups(getattr(django_settings, MODEL_GROUPS, None))
    )
    return result


def gateway() -> OllamaGateway:
    """The process's gateway, shared by the URLconf bridge and ``mount()``."""

    def build() -> OllamaGateway:
        from ollama_asgi.contrib.django.principal import DjangoAuthorizer

        current = settings()
        return OllamaGateway(current, authorize=DjangoAuthorizer(current, model_groups()))

    result: OllamaGateway = _cached("gateway", build)
    return result


def built_gateway() -> OllamaGateway | None:
    """The gateway if a request has built it already (for shutdown, which must not build one)."""
    result: OllamaGateway | None = _cache.get("gateway")
    return result


def reset(*, setting: str, **kwargs: object) -> None:
    """``setting_changed`` receiver: the next request builds settings and gateway afresh."""
    if setting in (SETTING, MODEL_GROUPS):
        with _lock:
            _cache.clear()
