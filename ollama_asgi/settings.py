"""One frozen settings object, and the loaders that build it from kwargs, mappings, env and modules.

Values are coerced and validated once, here, so the request path never re-checks configuration.
Every error is a :class:`ConfigError` that names the field, so a host's settings mistake reads
as a settings mistake and not as a traceback from deep inside the gateway.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast
from urllib.parse import urlsplit

__all__ = ["ApiKey", "ConfigError", "Settings", "parse_duration"]

AuthMode = Literal["host", "api_key", "none"]
_AUTH_MODES = ("host", "api_key", "none")


class ConfigError(ValueError):
    """A setting is missing, unknown or invalid; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"ollama-asgi setting {field!r}: {message}")
        self.field = field


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(value: object, *, field: str = "duration") -> float:
    """Seconds from ``30``, ``2.5``, ``"30s"``, ``"5m"``, ``"1h30m"`` or ``"250ms"`` (Go-style units)."""
    if isinstance(value, bool):
        raise ConfigError(field, f"expected a duration such as 30s or 5m, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            pos, seconds = 0, 0.0
            for match in _DURATION_PART.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
                pos = match.end()
            if pos != len(text) or not text:
                raise ConfigError(field, f"expected a duration such as 30s or 5m, got {value!r}") from None
    else:
        raise ConfigError(field, f"expected a duration such as 30s or 5m, got {type(value).__name__}")
    if seconds != seconds or seconds < 0 or seconds == float("inf"):
        raise ConfigError(field, f"must be a finite, non-negative duration, got {value!r}")
    return seconds


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A machine client's key. Only its SHA-256 is kept, so settings dumps and memory hold no secret."""

    id: str
    sha256: str
    admin: bool = False
    models: tuple[str, ...] | None = None
    weight: float = 1.0
    priority: str = "interactive"
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    cloud_models: bool | None = None  # None: Settings.cloud_models decides

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
            return cls._build(ident, secret, admin, None, 1.0, field)
        if isinstance(spec, Mapping):
            unknown = set(spec) - {
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
            }
            if unknown:
                raise ConfigError(field, f"unknown key(s) {sorted(unknown)} in an API key entry")
            if "key_sha256" in spec:
                secret = "sha256:" + str(spec["key_sha256"])
            elif "key" in spec:
                secret = str(spec["key"])
            else:
                raise ConfigError(field, "an API key entry needs 'key' or 'key_sha256'")
            models = spec.get("models")
            priority = spec.get("priority", "interactive")
            if priority not in ("interactive", "batch"):
                raise ConfigError(field, f"priority must be 'interactive' or 'batch', got {priority!r}")
            key = cls._build(
                str(spec.get("id", "")),
                secret,
                _to_bool(spec.get("admin", admin), field),
                None if models is None else _to_str_tuple(models, field),
                _to_float(spec.get("weight", 1.0), field, minimum=0.001),
                field,
            )
            return dataclasses.replace(
                key,
                priority=str(priority),
                requests_per_minute=_optional_pos_int(spec.get("requests_per_minute"), field),
                tokens_per_minute=_optional_pos_int(spec.get("tokens_per_minute"), field),
                cloud_models=None if spec.get("cloud_models") is None else _to_bool(spec["cloud_models"], field),
            )
        raise ConfigError(field, f"an API key must be a string or a mapping, got {type(spec).__name__}")

    @classmethod
    def _build(
        cls, ident: str, secret: str, admin: bool, models: tuple[str, ...] | None, weight: float, field: str
    ) -> ApiKey:
        if secret.startswith("sha256:"):
            digest = secret[7:].lower()
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ConfigError(field, "a sha256: key must be 64 hex digits")
        else:
            if len(secret) < 8:
                raise ConfigError(field, "an API key must be at least 8 characters long")
            digest = cls.digest(secret)
        return cls(id=ident or f"key-{digest[:8]}", sha256=digest, admin=admin, models=models, weight=weight)


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """One Ollama backend and what the gateway should know about it."""

    url: str
    name: str
    weight: float = 1.0
    parallel: int | None = None  # None: Settings.parallel
    vram_budget: int | None = None  # None: Settings.vram_budget
    labels: tuple[tuple[str, str], ...] = ()


def _to_bool(value: object, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in (
        "1",
        "true",
        "yes",
        "on",
        "0",
        "false",
        "no",
        "off",
    ):
        return value.strip().lower() in ("1", "true", "yes", "on")
    raise ConfigError(field, f"expected true or false, got {value!r}")


def _to_int(value: object, field: str, *, minimum: int = 0, maximum: int | None = None) -> int:
    if isinstance(value, bool):
        raise ConfigError(field, f"expected an integer, got {value!r}")
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        multiplier = 1
        for suffix, factor in (("kib", 1024), ("mib", 1024**2), ("gib", 1024**3), ("tib", 1024**4), ("k", 1024)):
            if text.lower().endswith(suffix):
                text, multiplier = text[: -len(suffix)], factor
                break
        try:
            value = int(text) * multiplier
        except ValueError:
            raise ConfigError(field, f"expected an integer, got {value!r}") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise ConfigError(field, f"expected an integer, got {type(value).__name__}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise ConfigError(field, f"must be {bound}, got {value}")
    return value


def _to_float(value: object, field: str, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool):
        raise ConfigError(field, f"expected a number, got {value!r}")
    try:
        number = float(cast(Any, value))
    except (TypeError, ValueError):
        raise ConfigError(field, f"expected a number, got {value!r}") from None
    if number != number or number < minimum:
        raise ConfigError(field, f"must be at least {minimum}, got {value!r}")
    return number


def _split(value: object) -> Iterable[object]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, Iterable) and not isinstance(value, bytes | Mapping):
        return list(value)
    return [value]


def _to_str_tuple(value: object, field: str) -> tuple[str, ...]:
    items = _split(value)
    if not all(isinstance(item, str) and item for item in items):
        raise ConfigError(field, f"expected a list of non-empty strings, got {value!r}")
    return tuple(cast(list[str], items))


def _to_backend_specs(value: object, field: str) -> tuple[BackendSpec, ...]:
    """Backends from URLs or mappings ``{"url", "name", "weight", "parallel", "vram_budget", "labels"}``."""
    specs: list[BackendSpec] = []
    for i, item in enumerate(_split(value)):
        if isinstance(item, BackendSpec):
            specs.append(item)
            continue
        if isinstance(item, str):
            item = {"url": item}
        if not isinstance(item, Mapping):
            raise ConfigError(field, f"a backend is a URL or a mapping, got {item!r}")
        unknown = set(item) - {"url", "name", "weight", "parallel", "vram_budget", "labels"}
        if unknown:
            raise ConfigError(field, f"unknown key(s) {sorted(unknown)} in a backend entry")
        if "url" not in item:
            raise ConfigError(field, "a backend entry needs a 'url'")
        (url,) = _to_upstreams([item["url"]], field, _specs=True)
        labels = item.get("labels") or {}
        if not isinstance(labels, Mapping):
            raise ConfigError(field, "labels must be a mapping")
        specs.append(
            BackendSpec(
                url=url,
                name=str(item.get("name") or f"backend-{i}"),
                weight=_to_float(item.get("weight", 1.0), field, minimum=0.001),
                parallel=_optional_pos_int(item.get("parallel"), field),
                vram_budget=_optional_bytes(item.get("vram_budget"), field),
                labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
            )
        )
    if not specs:
        raise ConfigError(field, "at least one Ollama base URL is required")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(field, f"backend names must be unique, got {names}")
    return tuple(specs)


def _to_upstreams(value: object, field: str, *, _specs: bool = False) -> tuple[str, ...]:
    if not _specs:
        return tuple(spec.url for spec in _to_backend_specs(value, field))
    urls = _to_str_tuple(value, field)
    if not urls:
        raise ConfigError(field, "at least one Ollama base URL is required")
    out = []
    for url in urls:
        if "://" not in url:
            url = "http://" + url  # OLLAMA_HOST is often given as host:port
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(field, f"{url!r} is not an http(s) URL")
        if parts.query or parts.fragment:
            raise ConfigError(field, f"{url!r} must not carry a query or fragment")
        out.append(url.rstrip("/"))
    return tuple(out)


def _to_auth(value: object, field: str) -> AuthMode:
    if value not in _AUTH_MODES:
        raise ConfigError(field, f"must be one of {', '.join(_AUTH_MODES)}, got {value!r}")
    return cast(AuthMode, value)


def _to_api_keys(value: object, field: str, *, admin: bool = False) -> tuple[ApiKey, ...]:
    if isinstance(value, Mapping):  # {"id": "secret"} is a common, readable form
        value = [{"id": k, "key": v} if isinstance(v, str) else {"id": k, **v} for k, v in value.items()]
    return tuple(ApiKey.parse(item, admin=admin, field=field) for item in _split(value))


def _to_buckets(value: object, field: str) -> tuple[int, ...]:
    buckets = sorted({_to_int(item, field, minimum=256) for item in _split(value)})
    if not buckets:
        raise ConfigError(field, "needs at least one context size")
    return tuple(buckets)


def _optional_str(value: object, field: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(field, f"expected a string, got {type(value).__name__}")
    return value


def _optional_models(value: object, field: str) -> tuple[str, ...] | None:
    if value is None or value == "" or value == "*":
        return None
    return _to_str_tuple(value, field)


def _pos_int(value: object, field: str) -> int:
    return _to_int(value, field, minimum=1)


def _non_neg_int(value: object, field: str) -> int:
    return _to_int(value, field, minimum=0)


def _choice(value: object, field: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(field, f"must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _go_duration(value: object, field: str) -> str:
    """A keep_alive as Ollama reads it; numbers become seconds, negative means forever."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value}s" if value >= 0 else "-1s"
    if isinstance(value, str):
        text = value.strip()
        parse_duration(text.lstrip("-"), field=field)
        return text if not text.replace(".", "").lstrip("-").isdigit() else f"{text}s"
    raise ConfigError(field, f"expected a duration such as 30m, got {value!r}")


def _optional_bytes(value: object, field: str) -> int | None:
    if value is None or value == "":
        return None
    return _to_int(value, field, minimum=1)


def _to_model_caps(value: object, field: str) -> tuple[tuple[str, int], ...]:
    return tuple((pattern, _to_int(size, field, minimum=256)) for pattern, size in _to_pattern_paths(value, field))


def _to_pattern_paths(value: object, field: str) -> tuple[tuple[str, str], ...]:
    """``pattern=value`` pairs from a mapping, a list of pairs or a comma-separated string."""
    items: list[object] = [f"{k}={v}" for k, v in value.items()] if isinstance(value, Mapping) else list(_split(value))
    pairs = []
    for item in items:
        if isinstance(item, tuple | list) and len(item) == 2:
            pattern, path = item
        elif isinstance(item, str) and "=" in item:
            pattern, _, path = item.partition("=")
        else:
            raise ConfigError(field, f"expected pattern=path, got {item!r}")
        pairs.append((str(pattern).strip().lower(), str(path).strip()))
    return tuple(pairs)


def _to_runner_options(value: object, field: str) -> tuple[tuple[str, int | bool], ...]:
    from ollama_asgi.protocol import OPTION_KINDS, RUNNER_OPTIONS  # protocol reads settings: imported late

    if value is None or value == "":
        return ()
    items: list[object] = list(value.items()) if isinstance(value, Mapping) else list(_split(value))
    out: list[tuple[str, int | bool]] = []
    for item in items:
        if isinstance(item, tuple | list) and len(item) == 2:
            name, raw = item
        elif isinstance(item, str) and "=" in item:
            name, _, raw = item.partition("=")
        else:
            raise ConfigError(field, f"expected name=value, got {item!r}")
        name = str(name).strip()
        if name not in RUNNER_OPTIONS or name == "num_ctx":
            choices = ", ".join(sorted(RUNNER_OPTIONS - {"num_ctx"}))
            raise ConfigError(field, f"{name!r} is not a runner option; expected one of {choices}")
        if OPTION_KINDS[name] == "bool":
            out.append((name, _to_bool(raw, field)))
        else:
            out.append((name, _to_int(raw, field, minimum=-1)))
    return tuple(out)


def _to_str(value: object, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(field, f"expected a non-empty string, got {value!r}")
    return value


def _optional_pos_int(value: object, field: str) -> int | None:
    if value is None or value == "":
        return None
    return _to_int(value, field, minimum=1)


def _duration(value: object, field: str) -> float:
    return parse_duration(value, field=field)


def _pos_duration(value: object, field: str) -> float:
    seconds = parse_duration(value, field=field)
    if seconds <= 0:
        raise ConfigError(field, "must be greater than zero")
    return seconds


def _doc(text: str, coerce: Callable[[object, str], Any]) -> dict[str, Any]:
    return {"doc": text, "coerce": coerce}


@dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    """Everything the gateway is configured with. Build it once at start-up and share it."""

    upstreams: tuple[str, ...] = field(
        default=("http://127.0.0.1:11434",),
        metadata=_doc(
            "Ollama servers: base URLs (env: comma-separated) or mappings with url, name, weight, parallel, "
            "vram_budget and labels. Read back as URLs; the details are in `backends`.",
            _to_backend_specs,
        ),
    )
    backends: tuple[BackendSpec, ...] = field(default=(), init=False, repr=False, metadata={"internal": True})
    auth: AuthMode = field(
        default="host",
        metadata=_doc(
            "host: the host app's authenticated scope['user'] or an API key; api_key: keys only; "
            "none: everyone is an anonymous, non-admin principal (must be chosen explicitly).",
            _to_auth,
        ),
    )
    api_keys: tuple[ApiKey, ...] = field(
        default=(),
        metadata=_doc("Keys accepted in 'Authorization: Bearer' for machine clients.", _to_api_keys),
    )
    admin_api_keys: tuple[ApiKey, ...] = field(
        default=(),
        metadata=_doc(
            "Keys whose holders may use management endpoints.",
            lambda v, f: _to_api_keys(v, f, admin=True),
        ),
    )
    admin_scopes: tuple[str, ...] = field(
        default=("ollama:admin",),
        metadata=_doc("Host auth scopes (scope['auth'].scopes) that make a user an admin.", _to_str_tuple),
    )
    allowed_models: tuple[str, ...] | None = field(
        default=None,
        metadata=_doc("Model name patterns every principal may use (None: all models).", _optional_models),
    )
    cloud_models: bool = field(
        default=False,
        metadata=_doc(
            "Let principals use Ollama's cloud models (name:cloud, name:tag:cloud, name:tag-cloud), which Ollama "
            "relays to ollama.com; off, they are refused with 403. A principal's own cloud_models overrides it.",
            _to_bool,
        ),
    )
    cloud_account_routes: bool = field(
        default=False,
        metadata=_doc(
            "Let administrators use /api/me, /api/signout, /api/user/keys/* and /api/experimental/web_search and "
            "web_fetch, which act as the Ollama server's ollama.com account; off, everyone gets 403.",
            _to_bool,
        ),
    )
    parallel: int = field(
        default=1,
        metadata=_doc("Concurrent requests per loaded model on each backend, like OLLAMA_NUM_PARALLEL.", _pos_int),
    )
    embed_parallel: int | None = field(
        default=None,
        metadata=_doc(
            "Separate concurrency for embeddings per backend (None: they share `parallel`).", _optional_pos_int
        ),
    )
    backend_parallel: int | None = field(
        default=None,
        metadata=_doc(
            "Concurrent requests per backend across all its loaded models (None: no cap beyond `parallel` per model).",
            _optional_pos_int,
        ),
    )
    max_queue: int = field(
        default=64, metadata=_doc("Requests waiting per backend before answering 503.", _non_neg_int)
    )
    queue_timeout: float = field(
        default=30.0, metadata=_doc("How long a request may wait for a slot before 503.", _pos_duration)
    )
    queue_timeout_max: float = field(
        default=300.0,
        metadata=_doc("Upper bound for a client's own X-Request-Timeout header.", _pos_duration),
    )
    rate_limit_rpm: int | None = field(
        default=None,
        metadata=_doc(
            "Requests per minute per principal unless the principal says otherwise (None: no limit).", _optional_pos_int
        ),
    )
    rate_limit_tpm: int | None = field(
        default=None,
        metadata=_doc("Tokens (prompt + generated) per minute per principal (None: no limit).", _optional_pos_int),
    )
    sse_keepalive: float = field(
        default=5.0,
        metadata=_doc(
            "While a streaming /v1 request waits, send an SSE comment this often (0: never); "
            "NDJSON streams never get anything but Ollama chunks.",
            _duration,
        ),
    )
    redis_url: str | None = field(
        default=None, metadata=_doc("Redis for state shared by workers (None: in-memory).", _optional_str)
    )
    redis_prefix: str = field(
        default="ollama-asgi",
        metadata=_doc("Key prefix in Redis, so several gateways can share one server.", _to_str),
    )
    redis_fail_open: bool = field(
        default=True,
        metadata=_doc(
            "When Redis is unreachable, keep serving on per-worker limits (true) or answer 503 (false).", _to_bool
        ),
    )
    lease_ttl: float = field(
        default=10.0,
        metadata=_doc("How long a crashed worker's slots stay taken in Redis before they expire.", _pos_duration),
    )
    default_num_ctx: int = field(
        default=4096, metadata=_doc("Context window used when nothing better is known.", _pos_int)
    )
    num_ctx_buckets: tuple[int, ...] = field(
        default=(2048, 4096, 8192, 16384, 32768),
        metadata=_doc("The sticky context sizes requests are rounded up to.", _to_buckets),
    )
    max_num_ctx: int = field(
        default=262144,
        metadata=_doc("Largest num_ctx a request may ask for; larger is answered 400.", _pos_int),
    )
    lifecycle: bool = field(
        default=True,
        metadata=_doc(
            "Let the gateway own model loads, num_ctx and keep_alive (and serve /v1 through the native API); "
            "false relays requests untouched.",
            _to_bool,
        ),
    )
    keep_alive: str = field(
        default="30m",
        metadata=_doc(
            "keep_alive the gateway sends with loads and requests (admins may send their own).", _go_duration
        ),
    )
    load_timeout: float = field(
        default=600.0, metadata=_doc("Longest time a model load may take before it is given up.", _pos_duration)
    )
    load_wait_timeout: float = field(
        default=120.0,
        metadata=_doc("How long a request waits for its model to load before 503 with Retry-After.", _pos_duration),
    )
    num_predict_reserve: int = field(
        default=1024,
        metadata=_doc("Tokens of room kept for the answer when a request sets no num_predict.", _pos_int),
    )
    model_max_num_ctx: tuple[tuple[str, int], ...] = field(
        default=(),
        metadata=_doc("Per-model context caps as pattern=tokens pairs, e.g. llama3*=16384.", _to_model_caps),
    )
    tokenizers: tuple[tuple[str, str], ...] = field(
        default=(),
        metadata=_doc(
            "Real tokenizers for counting prompt tokens, as pattern=/path/to/tokenizer.json pairs (needs the "
            "tokenizers package; never downloads). Models without one use a length estimate.",
            _to_pattern_paths,
        ),
    )
    context_overflow: str = field(
        default="reject",
        metadata=_doc(
            "When a prompt cannot fit the model's context: reject (400) or truncate (drop the oldest "
            "non-system chat messages and say so in X-Context-Truncated).",
            lambda v, f: _choice(v, f, ("reject", "truncate")),
        ),
    )
    honour_client_num_ctx: bool = field(
        default=True,
        metadata=_doc("Use a client's own options.num_ctx (up to the cap) instead of the buckets.", _to_bool),
    )
    runner_options: tuple[tuple[str, int | bool], ...] = field(
        default=(),
        metadata=_doc(
            "Runner options sent with every load and request, as name=value pairs, e.g. num_thread=8,use_mmap=false "
            "(num_batch, num_gpu, main_gpu, use_mmap, num_thread, ...; num_ctx is sized by the buckets). Ollama "
            "reloads a model for everyone when a request's runner options differ from the loaded ones, so the "
            "gateway owns them: an ordinary user's are dropped, an admin's are honoured.",
            _to_runner_options,
        ),
    )
    ps_interval: float = field(default=5.0, metadata=_doc("How often each backend's /api/ps is polled.", _pos_duration))
    health_interval: float = field(
        default=5.0, metadata=_doc("How often each backend is probed (jittered by ±20%).", _pos_duration)
    )
    breaker_failures: int = field(
        default=3, metadata=_doc("Consecutive failures that open a backend's circuit breaker.", _pos_int)
    )
    breaker_cooldown: float = field(
        default=5.0,
        metadata=_doc(
            "How long an open breaker waits before its probe (doubles while it keeps failing).", _pos_duration
        ),
    )
    placement: str = field(
        default="affinity",
        metadata=_doc(
            "How requests pick a backend: affinity (model-aware, the default), or round_robin / random "
            "(for comparison; they load models everywhere).",
            lambda v, f: _choice(v, f, ("affinity", "round_robin", "random")),
        ),
    )
    spill_wait: float = field(
        default=10.0,
        metadata=_doc("Queue wait on a model's home backend above which it spills to a second one.", _pos_duration),
    )
    vram_budget: int | None = field(
        default=None,
        metadata=_doc(
            "Memory for models per backend when NVML is not available (e.g. 24GiB; None: no guard).", _optional_bytes
        ),
    )
    vram_margin: float = field(
        default=0.10, metadata=_doc("Extra room kept free above a model's expected size.", lambda v, f: _to_float(v, f))
    )
    vram_reserved: int = field(
        default=512 * 1024 * 1024,
        metadata=_doc("GPU memory no model accounts for (CUDA context); not counted as fragmentation.", _non_neg_int),
    )
    max_loaded_models: int | None = field(
        default=None,
        metadata=_doc(
            "Ollama's OLLAMA_MAX_LOADED_MODELS, so the gateway picks which idle model leaves before Ollama "
            "would evict one on its own (None: not enforced).",
            _optional_pos_int,
        ),
    )
    swap_grouping: bool = field(
        default=True,
        metadata=_doc(
            "With max_loaded_models set, serve each backend's queue grouped by model (A B A C as A A B C), "
            "so a backend that holds fewer models than are wanted loads each once per group, not per request.",
            _to_bool,
        ),
    )
    swap_max_delay: float = field(
        default=10.0,
        metadata=_doc(
            "The most a request is passed over for another model's group beyond its FIFO turn, in seconds; "
            "then the running groups take no newcomers until its model has had its turn.",
            _duration,
        ),
    )
    nvml: bool = field(
        default=True, metadata=_doc("Read GPU memory with NVML when nvidia-ml-py and a GPU are present.", _to_bool)
    )
    gpu_devices: tuple[int, ...] | None = field(
        default=None,
        metadata=_doc(
            "GPU indices the backend uses (None: all).",
            lambda v, f: None if v in (None, "") else tuple(_to_int(i, f) for i in _split(v)),
        ),
    )
    prewarm: bool = field(
        default=True, metadata=_doc("Load the predicted next model ahead of time when memory allows.", _to_bool)
    )
    prewarm_threshold: float = field(
        default=0.6,
        metadata=_doc(
            "Confidence (share of observed transitions) needed before pre-warming.", lambda v, f: _to_float(v, f)
        ),
    )
    warm_prompts: tuple[tuple[str, str], ...] = field(
        default=(),
        metadata=_doc(
            "System prompts to evaluate right after a model loads (pattern=prompt pairs), so the first real "
            "request that starts with it reuses Ollama's prompt cache.",
            _to_pattern_paths,
        ),
    )
    max_body_bytes: int = field(
        default=32 * 1024 * 1024,
        metadata=_doc("Largest request body accepted (413 above); blob uploads are exempt.", _pos_int),
    )
    connect_timeout: float = field(default=5.0, metadata=_doc("Time allowed to connect to an upstream.", _pos_duration))
    read_timeout: float = field(
        default=600.0,
        metadata=_doc(
            "Longest silence allowed between upstream bytes. Not a total limit: long generations live on, "
            "but a cold model sends nothing until loaded, so keep it above the slowest load.",
            _pos_duration,
        ),
    )
    send_timeout: float = field(
        default=60.0,
        metadata=_doc(
            "Longest a client may take no bytes of an answer: a client that stops reading then loses "
            "its request, so its backend slot is freed and Ollama stops generating.",
            _pos_duration,
        ),
    )
    upstream_retry_after: float = field(
        default=2.0,
        metadata=_doc("Retry-After sent when no upstream can be reached.", _pos_duration),
    )
    drain_timeout: float = field(
        default=25.0,
        metadata=_doc(
            "On shutdown, how long requests in flight may run on (new and queued ones get 503 at once); "
            "keep it below the orchestrator's grace period (Kubernetes: 30s).",
            _pos_duration,
        ),
    )
    metrics_access: Literal["admin", "public", "off"] = field(
        default="admin",
        metadata=_doc(
            "Who may read /_gateway/metrics: admin (administrators), public (anyone who can reach it) or off.",
            lambda v, f: _choice(v, f, ("admin", "public", "off")),
        ),
    )
    metrics_port: int | None = field(
        default=None,
        metadata=_doc(
            "Also serve the metrics, unauthenticated, on this port (None: only at /_gateway/metrics).",
            lambda v, f: None if v in (None, "") else _to_int(v, f, minimum=1, maximum=65535),
        ),
    )
    metrics_host: str = field(default="127.0.0.1", metadata=_doc("Address the metrics port listens on.", _to_str))
    metrics_registry: Literal["gateway", "global"] = field(
        default="gateway",
        metadata=_doc(
            "gateway: a registry per gateway; global: prometheus-client's default registry, served by the host's "
            "own /metrics. PROMETHEUS_MULTIPROC_DIR switches to multiprocess mode either way.",
            lambda v, f: _choice(v, f, ("gateway", "global")),
        ),
    )
    log_prompts: bool = field(
        default=False,
        metadata=_doc("Put prompts and messages in the access log (they often hold personal data).", _to_bool),
    )
    tune_gc: bool = field(
        default=False,
        metadata=_doc(
            "At the first request, freeze the objects alive (gc.freeze) and raise the young-generation GC "
            "threshold to 10000: less collector time per request. Process-wide, hence off unless the host "
            "opts in; ollama-asgi serve does it by default.",
            _to_bool,
        ),
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            coerce = f.metadata.get("coerce")
            if coerce is not None:
                object.__setattr__(self, f.name, coerce(getattr(self, f.name), f.name))
        # `upstreams` reads back as plain URLs (what most code wants); the full specs live in `backends`.
        specs = cast(tuple[BackendSpec, ...], self.upstreams)
        object.__setattr__(self, "backends", specs)
        object.__setattr__(self, "upstreams", tuple(spec.url for spec in specs))
        if self.default_num_ctx > self.max_num_ctx:
            raise ConfigError("default_num_ctx", f"must not exceed max_num_ctx ({self.max_num_ctx})")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.init)

    @classmethod
    def describe(cls) -> dict[str, str]:
        """Each setting's one-line description, for docs and ``ollama-asgi doctor``."""
        return {f.name: f.metadata["doc"] for f in dataclasses.fields(cls) if f.init}

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> Settings:
        """Build from a dict such as Django's ``OLLAMA_ASGI``; keys are case-insensitive."""
        if not isinstance(data, Mapping):
            raise ConfigError("OLLAMA_ASGI", f"expected a mapping of settings, got {type(data).__name__}")
        names = cls.field_names()
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            name = str(key).lower()
            if name not in names:
                raise ConfigError(str(key), f"unknown setting{_suggest(name, names)}")
            kwargs[name] = value
        return cls(**kwargs)

    @classmethod
    def from_env(cls, prefix: str = "OLLAMA_ASGI_", environ: Mapping[str, str] | None = None) -> Settings:
        """Build from ``OLLAMA_ASGI_*`` variables; lists are comma-separated, durations like ``30s``.

        ``OLLAMA_HOST`` (Ollama's own variable) is used for ``upstreams`` when no prefixed value is set.
        """
        env = os.environ if environ is None else environ
        names = cls.field_names()
        data: dict[str, object] = {}
        for key, value in env.items():
            if not key.startswith(prefix):
                continue
            name = key[len(prefix) :].lower()
            if name not in names:
                raise ConfigError(key, f"unknown setting{_suggest(name, names, prefix.upper())}")
            data[name] = value
        if "upstreams" not in data and env.get("OLLAMA_HOST"):
            data["upstreams"] = env["OLLAMA_HOST"]
        return cls.from_mapping(data)

    @classmethod
    def from_module(cls, module: str, attr: str = "OLLAMA_ASGI") -> Settings:
        """Build from ``attr`` of an importable settings module (a mapping or a ``Settings``)."""
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(attr, f"cannot import settings module {module!r}: {exc}") from exc
        if not hasattr(mod, attr):
            raise ConfigError(attr, f"module {module!r} has no {attr} setting")
        value = getattr(mod, attr)
        return value if isinstance(value, Settings) else cls.from_mapping(value)

    def replace(self, **changes: Any) -> Settings:
        changes.setdefault("upstreams", self.backends)  # keep names, weights and budgets
        return dataclasses.replace(self, **changes)


def _suggest(name: str, names: Iterable[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.6)
    if close:
        shown = prefix + close[0].upper() if prefix else close[0]
        return f"; did you mean {shown!r}?"
    return f"; valid settings are: {', '.join(names)}"
