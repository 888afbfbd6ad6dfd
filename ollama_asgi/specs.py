"""The parts of a setting a host may build in Python: an API key and a backend, and how the loaders
read them from their entries (``id=secret``, a URL, a mapping).

Each part is checked where it is built, like ``Settings`` itself, so a bad ``BackendSpec(...)``
fails on the host's line and not when the gateway starts.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ollama_asgi.errors import ConfigError
from ollama_asgi.settings_text import read_as, read_entries, reject_unknown, within
from ollama_asgi.settings_types import NonNegativeInt, PositiveInt, Priority, Sha256, Text, Weight, check, field_types

__all__ = ["ApiKey", "BackendSpec", "base_url", "read_backends", "read_keys"]


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A machine client's key. Only its SHA-256 is kept, so settings dumps and memory hold no secret."""

    id: Text
    sha256: Sha256
    admin: bool = False
    models: tuple[Text, ...] | None = None
    weight: Weight = 1.0
    priority: Priority = "interactive"
    requests_per_minute: PositiveInt | None = None
    tokens_per_minute: PositiveInt | None = None
    cloud_models: bool | None = None  # None: Settings.cloud_models decides

    def __post_init__(self) -> None:
        check(self, owner="ApiKey.")

    @staticmethod
    def digest(secret: str) -> str:
        return hashlib.sha256(secret.encode()).hexdigest()

    @classmethod
    def parse(cls, spec: object, *, admin: bool = False, field: str = "api_keys") -> ApiKey:
        """Accept ``"secret"``, ``"id=secret"``, ``"id=sha256:<hex>"`` or a mapping with the same parts."""
        if isinstance(spec, ApiKey):
            return spec
        if isinstance(spec, str):
            ident, sep, secret = spec.strip().partition("=")
            if not sep:
                ident, secret = "", ident
            return within(field, lambda: cls._build(ident, secret, field, {"admin": admin}))
        if isinstance(spec, Mapping):
            entry = {str(k): v for k, v in spec.items()}
            reject_unknown(entry, _KEY_ENTRY, field, "an API key entry")
            if "key_sha256" in entry:
                secret = "sha256:" + str(entry["key_sha256"])
            elif "key" in entry:
                secret = str(entry["key"])
            else:
                raise ConfigError(field, "an API key entry needs 'key' or 'key_sha256'")
            hints = field_types(cls)
            parts = {k: read_as(v, hints[k], field) for k, v in entry.items() if k in hints}
            if entry.get("models") is not None:  # an empty list allows no model, unlike None
                parts["models"] = read_as(entry["models"], tuple[str, ...], field)
            parts.setdefault("admin", admin)
            return within(field, lambda: cls._build(str(parts.pop("id", "")), secret, field, parts))
        raise ConfigError(field, f"an API key must be a string or a mapping, got {type(spec).__name__}")

    @classmethod
    def _build(cls, ident: str, secret: str, field: str, parts: dict[str, Any]) -> ApiKey:
        if secret.startswith("sha256:"):
            digest = secret[7:].lower()
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ConfigError(field, "a sha256: key must be 64 hex digits")
        else:
            if len(secret) < 8:
                raise ConfigError(field, "an API key must be at least 8 characters long")
            digest = cls.digest(secret)
        return cls(id=ident or f"key-{digest[:8]}", sha256=digest, **parts)


_KEY_ENTRY = (
    "id",
    "key",
    "key_sha256",
    "admin",
    "models",
    "weight",
    "priority",
    "requests_per_minute",
    "tokens_per_minute",
    "cloud_models",
)


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """One Ollama backend and what the gateway should know about it."""

    url: str
    name: Text
    weight: Weight = 1.0
    parallel: PositiveInt | None = None  # None: Settings.parallel
    vram_budget: PositiveInt | None = None  # None: Settings.vram_budget
    labels: tuple[tuple[str, str], ...] = ()
    # This host's GPUs that are this backend's own, read through NVML; None: those of `gpu_devices`
    # for a backend on this host (a loopback URL), none for a remote one (its budget decides).
    gpus: tuple[NonNegativeInt, ...] | None = None

    def __post_init__(self) -> None:
        check(self, owner="BackendSpec.")
        object.__setattr__(self, "url", base_url(self.url, "upstreams"))


_BACKEND_ENTRY = ("url", "name", "weight", "parallel", "vram_budget", "labels", "gpus")


def read_backends(value: object, field: str) -> tuple[BackendSpec, ...]:
    """Backends from URLs or mappings ``{"url", "name", "weight", "parallel", "vram_budget", "labels", "gpus"}``."""
    hints = field_types(BackendSpec)
    specs: list[BackendSpec] = []
    for i, item in enumerate(read_entries(value)):
        if isinstance(item, BackendSpec):
            specs.append(item)
            continue
        if isinstance(item, str):
            item = {"url": item}
        if not isinstance(item, Mapping):
            raise ConfigError(field, f"a backend is a URL or a mapping, got {item!r}")
        entry = {str(k): v for k, v in item.items()}
        reject_unknown(entry, _BACKEND_ENTRY, field, "a backend entry")
        if not isinstance(entry.get("url"), str):
            raise ConfigError(field, "a backend entry needs a 'url'")
        labels = entry.pop("labels", None) or {}
        if not isinstance(labels, Mapping):
            raise ConfigError(field, "labels must be a mapping")
        parts: dict[str, Any] = {k: read_as(v, hints[k], field) for k, v in entry.items()}
        parts["name"] = parts.get("name") or f"backend-{i}"
        parts["labels"] = tuple(sorted((str(k), str(v)) for k, v in labels.items()))
        specs.append(within(field, functools.partial(BackendSpec, **parts)))
    if not specs:
        raise ConfigError(field, "at least one Ollama base URL is required")
    return tuple(specs)


def read_keys(value: object, field: str) -> tuple[ApiKey, ...]:
    """API keys from ``id=secret`` text, a list of entries or a mapping of id to secret (or to an entry)."""
    if isinstance(value, str) and value.strip().startswith("{"):
        value = read_entries(value)[0]
    if isinstance(value, Mapping):  # {"id": "secret"} is a common, readable form
        value = [{"id": k, "key": v} if isinstance(v, str) else {"id": k, **v} for k, v in value.items()]
    return tuple(ApiKey.parse(item, admin=field == "admin_api_keys", field=field) for item in read_entries(value))


def base_url(url: str, field: str) -> str:
    """An Ollama base URL as the gateway joins paths to it: a scheme (``host:port`` gets http), no slash."""
    if "://" not in url:
        url = "http://" + url  # OLLAMA_HOST is often given as host:port
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(field, f"{url!r} is not an http(s) URL")
    if parts.query or parts.fragment:
        raise ConfigError(field, f"{url!r} must not carry a query or fragment")
    return url.rstrip("/")
