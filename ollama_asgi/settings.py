"""One frozen settings object, and the loaders that build it from mappings, env and modules.

A field's declared type is what ``Settings(...)`` takes, so a type checker checks a host's call.
Text ("30s", "2MiB", "a,b", JSON lists, ``id=secret`` keys) is the loaders' business: they read it
into those types first (:mod:`ollama_asgi.settings_text`). Construction then holds every value to
its declared type and bounds once (:mod:`ollama_asgi.settings_types`), so the request path never
re-checks configuration. Every error is a :class:`ConfigError` that names the field, so a host's
settings mistake reads as a settings mistake and not as a traceback from deep inside the gateway.

The module is long because ``Settings`` declares every setting with its default and the line that
documents it (``describe``, ``doctor`` and the README table read them); they are one list, kept in
one place. The parts a host builds, ``ApiKey`` and ``BackendSpec``, live in :mod:`ollama_asgi.specs`
and are importable from here as well, where the README shows them.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from msgspec import Meta

from ollama_asgi.durations import go_duration
from ollama_asgi.errors import ConfigError
from ollama_asgi.settings_text import (
    read_as,
    read_keep_alive,
    read_pairs,
    read_runner_options,
    runner_option_kind,
    suggest,
)
from ollama_asgi.settings_types import (
    AuthMode,
    ContextSize,
    NonNegativeFloat,
    NonNegativeInt,
    Port,
    PositiveInt,
    PositiveSeconds,
    Seconds,
    Text,
    check,
    field_types,
)
from ollama_asgi.specs import ApiKey, BackendSpec, base_url, read_backends, read_keys

# ApiKey and BackendSpec are re-exported: a host builds them for Settings(...) and imports them from here.
__all__ = ["ApiKey", "BackendSpec", "Settings"]


# The settings that take more reading than their declared type gives: entries, pairs, runner options.
_READERS: dict[str, Callable[[object, str], object]] = {
    "upstreams": read_backends,
    "api_keys": read_keys,
    "admin_api_keys": read_keys,
    "allowed_models": lambda v, f: None if v in (None, "", "*") else read_as(v, tuple[str, ...], f),
    "keep_alive": read_keep_alive,
    "model_max_num_ctx": lambda v, f: tuple((p, read_as(n, int, f)) for p, n in read_pairs(v, f)),
    "tokenizers": lambda v, f: tuple((p, str(path)) for p, path in read_pairs(v, f)),
    "warm_prompts": lambda v, f: tuple((p, str(prompt)) for p, prompt in read_pairs(v, f)),
    "runner_options": read_runner_options,
}


def _doc(text: str, **more: object) -> dict[str, object]:
    return {"doc": text, **more}


_DEFAULT_UPSTREAMS = ("http://127.0.0.1:11434",)


@dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    """Everything the gateway is configured with. Build it once at start-up and share it."""

    upstreams: Annotated[tuple[str, ...], Meta(min_length=1)] = field(
        default=_DEFAULT_UPSTREAMS,
        metadata=_doc(
            "Ollama servers: base URLs (env: comma-separated) or mappings with url, name, weight, parallel, "
            "vram_budget, labels and gpus. Read back as URLs; the details are in `backends`."
        ),
    )
    backends: tuple[BackendSpec, ...] = field(
        default=(),
        repr=False,
        metadata=_doc(
            "The backends in full (from Python; loaders read them from `upstreams`); empty: one per upstream URL.",
            loader_key=False,
        ),
    )
    auth: AuthMode = field(
        default="host",
        metadata=_doc(
            "host: the host app's authenticated scope['user'] or an API key; api_key: keys only; "
            "none: everyone is an anonymous, non-admin principal (must be chosen explicitly)."
        ),
    )
    api_keys: tuple[ApiKey, ...] = field(
        default=(), metadata=_doc("Keys accepted in 'Authorization: Bearer' for machine clients.")
    )
    admin_api_keys: tuple[ApiKey, ...] = field(
        default=(), metadata=_doc("Keys whose holders may use management endpoints.")
    )
    admin_scopes: tuple[Text, ...] = field(
        default=("ollama:admin",),
        metadata=_doc("Host auth scopes (scope['auth'].scopes) that make a user an admin."),
    )
    allowed_models: tuple[Text, ...] | None = field(
        default=None, metadata=_doc("Model name patterns every principal may use (None: all models).")
    )
    cloud_models: bool = field(
        default=False,
        metadata=_doc(
            "Let principals use Ollama's cloud models (name:cloud, name:tag:cloud, name:tag-cloud), which Ollama "
            "relays to ollama.com; off, they are refused with 403. A principal's own cloud_models overrides it."
        ),
    )
    cloud_account_routes: bool = field(
        default=False,
        metadata=_doc(
            "Let administrators use /api/me, /api/signout, /api/user/keys/* and /api/experimental/web_search and "
            "web_fetch, which act as the Ollama server's ollama.com account; off, everyone gets 403."
        ),
    )
    parallel: PositiveInt = field(
        default=1,
        metadata=_doc("Concurrent requests per loaded model on each backend, like OLLAMA_NUM_PARALLEL."),
    )
    embed_parallel: PositiveInt | None = field(
        default=None,
        metadata=_doc("Separate concurrency for embeddings per backend (None: they share `parallel`)."),
    )
    backend_parallel: PositiveInt | None = field(
        default=None,
        metadata=_doc(
            "Concurrent requests per backend across all its loaded models (None: no cap beyond `parallel` per model)."
        ),
    )
    max_queue: NonNegativeInt = field(default=64, metadata=_doc("Requests waiting per backend before answering 503."))
    queue_timeout: PositiveSeconds = field(
        default=30.0, metadata=_doc("How long a request may wait for a slot before 503.")
    )
    queue_timeout_max: PositiveSeconds = field(
        default=300.0, metadata=_doc("Upper bound for a client's own X-Request-Timeout header.")
    )
    rate_limit_rpm: PositiveInt | None = field(
        default=None,
        metadata=_doc("Requests per minute per principal unless the principal says otherwise (None: no limit)."),
    )
    rate_limit_tpm: PositiveInt | None = field(
        default=None,
        metadata=_doc("Tokens (prompt + generated) per minute per principal (None: no limit)."),
    )
    sse_keepalive: Seconds = field(
        default=5.0,
        metadata=_doc(
            "While a streaming /v1 request waits, send an SSE comment this often (0: never); "
            "NDJSON streams never get anything but Ollama chunks."
        ),
    )
    redis_url: str | None = field(default=None, metadata=_doc("Redis for state shared by workers (None: in-memory)."))
    redis_prefix: Text = field(
        default="ollama-asgi", metadata=_doc("Key prefix in Redis, so several gateways can share one server.")
    )
    redis_fail_open: bool = field(
        default=True,
        metadata=_doc("When Redis is unreachable, keep serving on per-worker limits (true) or answer 503 (false)."),
    )
    lease_ttl: PositiveSeconds = field(
        default=10.0, metadata=_doc("How long a crashed worker's slots stay taken in Redis before they expire.")
    )
    default_num_ctx: PositiveInt = field(
        default=4096, metadata=_doc("Context window used when nothing better is known.")
    )
    num_ctx_buckets: Annotated[tuple[ContextSize, ...], Meta(min_length=1)] = field(
        default=(2048, 4096, 8192, 16384, 32768),
        metadata=_doc("The sticky context sizes requests are rounded up to."),
    )
    max_num_ctx: PositiveInt = field(
        default=262144, metadata=_doc("Largest num_ctx a request may ask for; larger is answered 400.")
    )
    lifecycle: bool = field(
        default=True,
        metadata=_doc(
            "Let the gateway own model loads, num_ctx and keep_alive (and serve /v1 through the native API); "
            "false relays requests untouched."
        ),
    )
    keep_alive: str = field(
        default="30m",
        metadata=_doc("keep_alive the gateway sends with loads and requests (admins may send their own)."),
    )
    load_timeout: PositiveSeconds = field(
        default=600.0, metadata=_doc("Longest time a model load may take before it is given up.")
    )
    load_wait_timeout: PositiveSeconds = field(
        default=120.0,
        metadata=_doc("How long a request waits for its model to load before 503 with Retry-After."),
    )
    num_predict_reserve: PositiveInt = field(
        default=1024, metadata=_doc("Tokens of room kept for the answer when a request sets no num_predict.")
    )
    model_max_num_ctx: tuple[tuple[str, ContextSize], ...] = field(
        default=(), metadata=_doc("Per-model context caps as pattern=tokens pairs, e.g. llama3*=16384.")
    )
    tokenizers: tuple[tuple[str, str], ...] = field(
        default=(),
        metadata=_doc(
            "Real tokenizers for counting prompt tokens, as pattern=/path/to/tokenizer.json pairs (needs the "
            "tokenizers package; never downloads). Models without one use a length estimate."
        ),
    )
    context_overflow: Literal["reject", "truncate"] = field(
        default="reject",
        metadata=_doc(
            "When a prompt cannot fit the model's context: reject (400) or truncate (drop the oldest "
            "non-system chat messages and say so in X-Context-Truncated)."
        ),
    )
    honour_client_num_ctx: bool = field(
        default=True, metadata=_doc("Use a client's own options.num_ctx (up to the cap) instead of the buckets.")
    )
    runner_options: tuple[tuple[str, int | bool], ...] = field(
        default=(),
        metadata=_doc(
            "Runner options sent with every load and request, as name=value pairs, e.g. num_thread=8,use_mmap=false "
            "(num_batch, num_gpu, main_gpu, use_mmap, num_thread, ...; num_ctx is sized by the buckets). Ollama "
            "reloads a model for everyone when a request's runner options differ from the loaded ones, so the "
            "gateway owns them: an ordinary user's are dropped, an admin's are honoured."
        ),
    )
    ps_interval: PositiveSeconds = field(default=5.0, metadata=_doc("How often each backend's /api/ps is polled."))
    health_interval: PositiveSeconds = field(
        default=5.0, metadata=_doc("How often each backend is probed (jittered by ±20%).")
    )
    breaker_failures: PositiveInt = field(
        default=3, metadata=_doc("Consecutive failures that open a backend's circuit breaker.")
    )
    breaker_cooldown: PositiveSeconds = field(
        default=5.0,
        metadata=_doc("How long an open breaker waits before its probe (doubles while it keeps failing)."),
    )
    placement: Literal["affinity", "round_robin", "random"] = field(
        default="affinity",
        metadata=_doc(
            "How requests pick a backend: affinity (model-aware, the default), or round_robin / random "
            "(for comparison; they load models everywhere)."
        ),
    )
    spill_wait: PositiveSeconds = field(
        default=10.0,
        metadata=_doc("Queue wait on a model's home backend above which it spills to a second one."),
    )
    conversation_affinity: bool = field(
        default=True,
        metadata=_doc(
            "Send a conversation's next turn to the backend that served its last one, where Ollama still holds "
            "its history's KV cache (when its model is loaded on several backends)."
        ),
    )
    conversation_wait: Seconds = field(
        default=3.0,
        metadata=_doc(
            "How much longer a conversation's turn may expect to queue on the backend holding its cache than on "
            "the best other one; beyond it, the turn goes elsewhere and its history is evaluated again."
        ),
    )
    vram_budget: PositiveInt | None = field(
        default=None,
        metadata=_doc("Memory for models per backend when NVML is not available (e.g. 24GiB; None: no guard)."),
    )
    vram_margin: NonNegativeFloat = field(
        default=0.10, metadata=_doc("Extra room kept free above a model's expected size.")
    )
    vram_reserved: NonNegativeInt = field(
        default=512 * 1024 * 1024,
        metadata=_doc("GPU memory no model accounts for (CUDA context); not counted as fragmentation."),
    )
    max_loaded_models: PositiveInt | None = field(
        default=None,
        metadata=_doc(
            "Ollama's OLLAMA_MAX_LOADED_MODELS, so the gateway picks which idle model leaves before Ollama "
            "would evict one on its own (None: not enforced)."
        ),
    )
    swap_grouping: bool = field(
        default=True,
        metadata=_doc(
            "With max_loaded_models set, serve each backend's queue grouped by model (A B A C as A A B C), "
            "so a backend that holds fewer models than are wanted loads each once per group, not per request."
        ),
    )
    swap_max_delay: Seconds = field(
        default=10.0,
        metadata=_doc(
            "The most a request is passed over for another model's group beyond its FIFO turn, in seconds; "
            "then the running groups take no newcomers until its model has had its turn."
        ),
    )
    nvml: bool = field(
        default=True, metadata=_doc("Read GPU memory with NVML when nvidia-ml-py and a GPU are present.")
    )
    gpu_devices: tuple[NonNegativeInt, ...] | None = field(
        default=None,
        metadata=_doc(
            "This host's GPU indices that backends on this host use unless they name their `gpus` (None: all)."
        ),
    )
    prewarm: bool = field(
        default=True,
        metadata=_doc(
            "Load the model each principal is predicted to ask for next into free memory while the loader is "
            "idle; the same predictions choose which idle model a load evicts."
        ),
    )
    prewarm_threshold: NonNegativeFloat = field(
        default=0.6, metadata=_doc("Confidence (share of observed transitions) needed before pre-warming.")
    )
    warm_prompts: tuple[tuple[str, str], ...] = field(
        default=(),
        metadata=_doc(
            "System prompts to evaluate right after a model loads (pattern=prompt pairs), so the first real "
            "request that starts with it reuses Ollama's prompt cache."
        ),
    )
    max_body_bytes: PositiveInt = field(
        default=32 * 1024 * 1024,
        metadata=_doc("Largest request body accepted (413 above); blob uploads are exempt."),
    )
    connect_timeout: PositiveSeconds = field(default=5.0, metadata=_doc("Time allowed to connect to an upstream."))
    read_timeout: PositiveSeconds = field(
        default=600.0,
        metadata=_doc(
            "Longest silence allowed between upstream bytes. Not a total limit: long generations live on, "
            "but a cold model sends nothing until loaded, so keep it above the slowest load."
        ),
    )
    send_timeout: PositiveSeconds = field(
        default=60.0,
        metadata=_doc(
            "Longest a client may take no bytes of an answer: a client that stops reading then loses "
            "its request, so its backend slot is freed and Ollama stops generating."
        ),
    )
    upstream_retry_after: PositiveSeconds = field(
        default=2.0, metadata=_doc("Retry-After sent when no upstream can be reached.")
    )
    drain_timeout: PositiveSeconds = field(
        default=25.0,
        metadata=_doc(
            "On shutdown, how long requests in flight may run on (new and queued ones get 503 at once); "
            "keep it below the orchestrator's grace period (Kubernetes: 30s)."
        ),
    )
    metrics_access: Literal["admin", "public", "off"] = field(
        default="admin",
        metadata=_doc(
            "Who may read /_gateway/metrics: admin (administrators), public (anyone who can reach it) or off."
        ),
    )
    metrics_port: Port | None = field(
        default=None,
        metadata=_doc("Also serve the metrics, unauthenticated, on this port (None: only at /_gateway/metrics)."),
    )
    metrics_host: Text = field(default="127.0.0.1", metadata=_doc("Address the metrics port listens on."))
    metrics_registry: Literal["gateway", "global"] = field(
        default="gateway",
        metadata=_doc(
            "gateway: a registry per gateway; global: prometheus-client's default registry, served by the host's "
            "own /metrics. PROMETHEUS_MULTIPROC_DIR switches to multiprocess mode either way."
        ),
    )
    log_prompts: bool = field(
        default=False,
        metadata=_doc("Put prompts and messages in the access log (they often hold personal data)."),
    )
    tune_gc: bool = field(
        default=False,
        metadata=_doc(
            "At the first request, freeze the objects alive (gc.freeze) and raise the young-generation GC "
            "threshold to 10000: less collector time per request. Process-wide, hence off unless the host "
            "opts in; ollama-asgi serve does it by default."
        ),
    )

    def __post_init__(self) -> None:
        check(self, owner="")
        set_ = object.__setattr__
        self._set_backends()
        # A key in admin_api_keys is an admin's, however it was built.
        set_(
            self,
            "admin_api_keys",
            tuple(k if k.admin else dataclasses.replace(k, admin=True) for k in self.admin_api_keys),
        )
        set_(self, "num_ctx_buckets", tuple(sorted(set(self.num_ctx_buckets))))
        for name in ("model_max_num_ctx", "tokenizers", "warm_prompts"):
            pairs = getattr(self, name)
            set_(self, name, tuple((p.strip().lower(), v.strip() if isinstance(v, str) else v) for p, v in pairs))
        set_(self, "keep_alive", go_duration(self.keep_alive, "keep_alive"))
        if self.redis_url == "":
            set_(self, "redis_url", None)
        _check_runner_options(self.runner_options, "runner_options")
        if self.default_num_ctx > self.max_num_ctx:
            raise ConfigError("default_num_ctx", f"must not exceed max_num_ctx ({self.max_num_ctx})")

    def _set_backends(self) -> None:
        """``upstreams`` reads back as plain URLs (what most code wants); the full specs live in ``backends``."""
        urls = tuple(base_url(url, "upstreams") for url in self.upstreams)
        backends = self.backends or tuple(BackendSpec(url, f"backend-{i}") for i, url in enumerate(urls))
        if self.backends and urls not in (tuple(b.url for b in backends), _DEFAULT_UPSTREAMS):
            raise ConfigError("backends", "names other servers than upstreams; give one of the two")
        names = [b.name for b in backends]
        if len(set(names)) != len(names):
            raise ConfigError("upstreams", f"backend names must be unique, got {names}")
        object.__setattr__(self, "backends", backends)
        object.__setattr__(self, "upstreams", tuple(b.url for b in backends))

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The keys the loaders read (``backends`` is read from ``upstreams``)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("loader_key", True))

    @classmethod
    def describe(cls) -> dict[str, str]:
        """Each setting's one-line description, for docs and ``ollama-asgi doctor``."""
        docs = {f.name: str(f.metadata["doc"]) for f in dataclasses.fields(cls)}
        return {name: docs[name] for name in cls.field_names()}

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> Settings:
        """Build from a dict such as Django's ``OLLAMA_ASGI``; keys are case-insensitive, values may be text."""
        if not isinstance(data, Mapping):
            raise ConfigError("OLLAMA_ASGI", f"expected a mapping of settings, got {type(data).__name__}")
        names = cls.field_names()
        hints = field_types(cls)
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            name = str(key).lower()
            if name not in names:
                raise ConfigError(str(key), f"unknown setting{suggest(name, names)}")
            reader = _READERS.get(name)
            kwargs[name] = reader(value, name) if reader else read_as(value, hints[name], name)
        if "upstreams" in kwargs:
            kwargs["backends"] = kwargs.pop("upstreams")
        return cls(**kwargs)

    @classmethod
    def from_env(cls, prefix: str = "OLLAMA_ASGI_", environ: Mapping[str, str] | None = None) -> Settings:
        """Build from ``OLLAMA_ASGI_*`` variables; lists are comma-separated or JSON, durations like ``30s``.

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
                raise ConfigError(key, f"unknown setting{suggest(name, names, prefix.upper())}")
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
        """A copy with ``changes``; new ``upstreams`` replace the backends, new ``backends`` the upstreams."""
        if "upstreams" in changes:
            changes.setdefault("backends", ())
        elif "backends" in changes:
            changes["upstreams"] = _DEFAULT_UPSTREAMS
        return dataclasses.replace(self, **changes)


def _check_runner_options(options: tuple[tuple[str, int | bool], ...], field: str) -> None:
    for name, value in options:
        if runner_option_kind(name, field) == "bool" and not isinstance(value, bool):
            raise ConfigError(field, f"{name} takes true or false, got {value!r}")
        if runner_option_kind(name, field) == "int" and (isinstance(value, bool) or value < -1):
            raise ConfigError(field, f"{name} takes an integer of -1 or more, got {value!r}")
