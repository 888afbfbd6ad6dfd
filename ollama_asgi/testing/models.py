"""The emulated model catalogue: model descriptions, Ollama model names, and the local store."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_MODELS",
    "DEFAULT_NAMESPACE",
    "DEFAULT_TAG",
    "EmulatedModel",
    "ModelName",
    "ModelStore",
    "StoredModel",
    "models_from_json",
    "parse_name",
]

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

# GGUF ``general.file_type`` codes for the quantisations the catalogue uses.
_FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q4_K_S": 14, "Q4_K_M": 15, "BF16": 32}

_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}$")
_HOST = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}$")


@dataclass(frozen=True)
class ModelName:
    """A parsed ``[host/][namespace/]model[:tag]`` name, Ollama's ``model.Name``."""

    host: str
    namespace: str
    model: str
    tag: str

    @property
    def key(self) -> str:
        """Case-folded full name: Ollama looks names up case-insensitively."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}".lower()

    @property
    def display(self) -> str:
        """The shortest form, as ``/api/tags`` shows it (``DisplayShortest``)."""
        if self.host.lower() == DEFAULT_HOST:
            if self.namespace.lower() == DEFAULT_NAMESPACE:
                return f"{self.model}:{self.tag}"
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def full(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"


def parse_name(name: str) -> ModelName | None:
    """Parse like ``model.ParseName``; ``None`` when the name is not valid (e.g. empty)."""
    text = name.strip()
    if not text:
        return None
    if "@" in text:
        text = text.split("@", 1)[0]
    host, namespace, tag = DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > slash:
        text, tag = text[:colon], text[colon + 1 :]
    parts = text.split("/")
    if len(parts) > 3:
        return None
    model = parts[-1]
    if len(parts) >= 2:
        namespace = parts[-2]
    if len(parts) == 3:
        host = parts[0]
    if not (_PART.match(model) and _PART.match(tag) and _PART.match(namespace) and _HOST.match(host)):
        return None
    return ModelName(host, namespace, model, tag)


def _derive_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _parameter_count(size: str) -> int:
    match = re.match(r"^\s*([0-9.]+)\s*([KMBT]?)", size.upper())
    if not match:
        return 0
    scale = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}[match.group(2)]
    return int(float(match.group(1)) * scale)


@dataclass(frozen=True)
class EmulatedModel:
    """One model the emulator can list, show, load and run.

    Memory needed to load it (what ``/api/ps`` reports and the VRAM budget is checked against) is
    ``size + num_ctx * parallel * 4 * embedding_length`` bytes: the weights plus an f16 K and V
    cache row per context slot, so a bigger ``num_ctx`` or more parallel slots cost memory as in
    Ollama. With ``embedding_length=0`` the memory is exactly ``size``.
    """

    name: str
    size: int
    context_length: int = 4096
    family: str = "llama"
    parameter_size: str = "7B"
    quantization_level: str = "Q4_K_M"
    capabilities: tuple[str, ...] = ("completion",)
    embedding_length: int = 0
    digest: str = ""
    parallel: int | None = None
    families: tuple[str, ...] = ()
    template: str = "{{ .Prompt }}"
    system: str = ""
    license: str = ""
    parameters: tuple[tuple[str, Any], ...] = ()
    """Modelfile ``PARAMETER`` values (e.g. ``(("num_ctx", 8192),)``); they sit between Ollama's
    defaults and the request's ``options``."""

    def __post_init__(self) -> None:
        parsed = parse_name(self.name)
        if parsed is None:
            raise ValueError(f"invalid model name {self.name!r}")
        object.__setattr__(self, "name", parsed.display)
        if not self.digest:
            object.__setattr__(self, "digest", _derive_digest(parsed.display))
        if self.is_embedding and self.embedding_length <= 0:
            raise ValueError(f"embedding model {self.name!r} needs embedding_length > 0")
        if self.size < 0 or self.context_length < 1:
            raise ValueError("size must be >= 0 and context_length >= 1")
        if not self.families:
            object.__setattr__(self, "families", (self.family,))

    @property
    def parsed_name(self) -> ModelName:
        parsed = parse_name(self.name)
        assert parsed is not None
        return parsed

    @property
    def is_embedding(self) -> bool:
        """An embedding-only model; Ollama runs these with one slot and refuses generation."""
        return "embedding" in self.capabilities and "completion" not in self.capabilities

    @property
    def dimensions(self) -> int:
        """Length of the vectors its embeddings have."""
        return self.embedding_length or 768

    def memory_bytes(self, num_ctx: int, parallel: int) -> int:
        """Bytes this model occupies when loaded with ``num_ctx`` per slot and ``parallel`` slots."""
        return self.size + num_ctx * parallel * 4 * self.embedding_length

    def renamed(self, name: str) -> EmulatedModel:
        """The same blob under another name, as ``/api/copy`` makes (runners are shared by digest)."""
        return dataclasses.replace(self, name=name)

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": list(self.families),
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }

    def model_info(self) -> dict[str, Any]:
        """The GGUF key/values ``/api/show`` returns as ``model_info``."""
        info: dict[str, Any] = {
            "general.architecture": self.family,
            "general.file_type": _FILE_TYPES.get(self.quantization_level.upper(), 15),
            "general.parameter_count": _parameter_count(self.parameter_size),
            "general.quantization_version": 2,
            f"{self.family}.context_length": self.context_length,
        }
        if self.embedding_length:
            info[f"{self.family}.embedding_length"] = self.embedding_length
        info["tokenizer.ggml.model"] = "gpt2"
        return info


def _model(name: str, **kwargs: Any) -> EmulatedModel:
    return EmulatedModel(name=name, **kwargs)


DEFAULT_MODELS: tuple[EmulatedModel, ...] = (
    _model(
        "llama3.2:latest",
        size=2_019_393_189,
        context_length=131072,
        family="llama",
        parameter_size="3.2B",
        quantization_level="Q4_K_M",
        capabilities=("completion", "tools"),
        embedding_length=3072,
        parameters=(("stop", ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),),
    ),
    _model(
        "qwen2.5:0.5b",
        size=397_821_319,
        context_length=32768,
        family="qwen2",
        parameter_size="494.03M",
        quantization_level="Q4_K_M",
        capabilities=("completion", "tools"),
        embedding_length=896,
    ),
    _model(
        "qwen3:0.6b",
        size=522_653_767,
        context_length=40960,
        family="qwen3",
        parameter_size="751.63M",
        quantization_level="Q4_K_M",
        capabilities=("completion", "tools", "thinking"),
        embedding_length=1024,
    ),
    _model(
        "llava:7b",
        size=4_733_363_377,
        context_length=4096,
        family="llama",
        families=("llama", "clip"),
        parameter_size="7B",
        quantization_level="Q4_0",
        capabilities=("completion", "vision"),
        embedding_length=4096,
    ),
    _model(
        "nomic-embed-text:latest",
        size=274_302_450,
        context_length=2048,
        family="nomic-bert",
        parameter_size="137M",
        quantization_level="F16",
        capabilities=("embedding",),
        embedding_length=768,
    ),
    _model(
        "all-minilm:latest",
        size=45_960_996,
        context_length=512,
        family="bert",
        parameter_size="23M",
        quantization_level="F16",
        capabilities=("embedding",),
        embedding_length=384,
    ),
)


@dataclass
class StoredModel:
    model: EmulatedModel
    modified_ns: int = field(default_factory=time.time_ns)


class ModelStore:
    """The local model store (what ``/api/tags`` lists), keyed by case-folded full name."""

    def __init__(self, models: Iterable[EmulatedModel] = ()) -> None:
        self._entries: dict[str, StoredModel] = {}
        for model in models:
            self.add(model)

    def add(self, model: EmulatedModel) -> EmulatedModel:
        self._entries[model.parsed_name.key] = StoredModel(model)
        return model

    def get(self, name: str) -> EmulatedModel | None:
        entry = self.entry(name)
        return entry.model if entry else None

    def entry(self, name: str) -> StoredModel | None:
        parsed = parse_name(name)
        return self._entries.get(parsed.key) if parsed else None

    def remove(self, name: str) -> bool:
        parsed = parse_name(name)
        return parsed is not None and self._entries.pop(parsed.key, None) is not None

    def __iter__(self) -> Iterator[StoredModel]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    def digests(self) -> set[str]:
        return {entry.model.digest for entry in self._entries.values()}


def models_from_json(data: object) -> list[EmulatedModel]:
    """Build models from JSON (a list of objects with :class:`EmulatedModel` fields), for the CLI."""
    if not isinstance(data, list):
        raise ValueError("a model list must be a JSON array of objects")
    models = []
    for item in data:
        if not isinstance(item, Mapping):
            raise ValueError("each model must be a JSON object")
        fields = dict(item)
        for key in ("capabilities", "families"):
            if key in fields:
                fields[key] = tuple(fields[key])
        if "parameters" in fields:
            params = fields["parameters"]
            pairs = params.items() if isinstance(params, Mapping) else params
            fields["parameters"] = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in pairs)
        models.append(EmulatedModel(**fields))
    return models
