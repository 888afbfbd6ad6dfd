"""Deterministic "model output": reply tokens, tool calls, JSON formats, embeddings, timing metrics."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import secrets
import string
import struct
import time
import zlib
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ollama_asgi.testing.models import EmulatedModel
from ollama_asgi.testing.records import EmulatorStats
from ollama_asgi.testing.scheduler import Lease

__all__ = [
    "TEMPLATE_OVERHEAD",
    "THINKING_TOKENS",
    "Piece",
    "Plan",
    "ReplyFunction",
    "Run",
    "context_ids",
    "echo_tokens",
    "embedding",
    "metrics",
    "normalise",
    "parse_tool_calls",
    "plan_reply",
    "words",
]

ReplyFunction = Callable[[str, str], Sequence[str]]
"""``reply(model_name, prompt_text) -> tokens``: replaces the default echo reply."""

TEMPLATE_OVERHEAD = 10
"""Tokens a chat template adds around the prompt; counted in ``prompt_eval_count``."""
THINKING_TOKENS = ("Let ", "me ", "think.")
"""What a thinking model (``think`` on, its default) streams as ``thinking`` before the reply;
counted in ``eval_count`` but not against ``num_predict``."""

Piece = tuple[str, Any]
"""``("thinking" | "content", text)`` or ``("tool_calls", [call, ...])``."""


def words(text: str) -> list[str]:
    return text.split()


def echo_tokens(prompt_text: str, count: int) -> list[str]:
    """The prompt's words repeated to ``count`` tokens; each but the last ends in one space."""
    source = words(prompt_text) or ["ok"]
    chosen = [source[i % len(source)] for i in range(count)]
    return [word + " " for word in chosen[:-1]] + chosen[-1:]


@dataclass
class Plan:
    """Everything a generation will emit, decided before the first token."""

    tokens: list[str]
    done_reason: str
    thinking: list[str] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)

    @property
    def eval_count(self) -> int:
        calls = sum(len(json.dumps(_said(call)).split()) for call in self.tool_calls)
        return len(self.tokens) + len(self.thinking) + calls


def _schema_value(schema: Any, text: str, depth: int = 0) -> Any:
    """A value that satisfies a (simple) JSON schema, with strings holding ``text``."""
    if not isinstance(schema, dict) or depth > 8:
        return text
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {name: _schema_value(sub, text, depth + 1) for name, sub in props.items()}
    if kind == "array":
        return [_schema_value(schema.get("items"), text, depth + 1)]
    return {"integer": 1, "number": 1.0, "boolean": True, "null": None}.get(str(kind), text)


def _tool_arguments(tool: dict[str, Any], prompt_text: str) -> dict[str, Any]:
    params = (tool.get("function") or {}).get("parameters") or {}
    props = params.get("properties") or {}
    required = params.get("required") or list(props)
    first = next(iter(words(prompt_text)), "ok")
    return {name: _schema_value(props.get(name), first) for name in required if name in props}


def _tool_calls(tools: list[dict[str, Any]], prompt_text: str) -> list[dict[str, Any]]:
    """Call the first tool whose function name the prompt mentions (the emulator's only rule)."""
    lowered = prompt_text.lower()
    for tool in tools:
        name = (tool.get("function") or {}).get("name")
        if isinstance(name, str) and name and re.search(rf"(?<![\w]){re.escape(name.lower())}(?![\w])", lowered):
            return [{"function": {"name": name, "arguments": _tool_arguments(tool, prompt_text)}}]
    return []


def _said(call: dict[str, Any]) -> dict[str, Any]:
    """What the model said for a call: its name and arguments (the id and index are the server's)."""
    function = call["function"]
    return {"name": function["name"], "arguments": function["arguments"]}


def _numbered(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Calls as newest Ollama answers them: an id of its own each, and a running ``function.index``."""
    alphabet = string.ascii_lowercase + string.digits
    return [
        {
            "id": "call_" + "".join(secrets.choice(alphabet) for _ in range(8)),
            "function": {"index": index, **_said(call)},
        }
        for index, call in enumerate(calls)
    ]


def parse_tool_calls(text: str, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ollama's tool parser, for a reply made of JSON calls only: ``{"name": ..., "parameters": ...}``
    objects (or ``arguments``) naming offered tools, one after another; anything else is no call."""
    offered = {(tool.get("function") or {}).get("name") for tool in tools if isinstance(tool, dict)}
    decoder, at = json.JSONDecoder(), 0
    calls: list[dict[str, Any]] = []
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at == len(text):
            return calls
        try:
            value, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            return []
        arguments = value.get("parameters", value.get("arguments")) if isinstance(value, dict) else None
        if not isinstance(arguments, dict) or value.get("name") not in offered:
            return []
        calls.append({"function": {"name": value["name"], "arguments": arguments}})


def _cut_at_stop(tokens: list[str], stops: list[str]) -> list[str] | None:
    """The tokens up to the first stop string, which may end inside a token: Ollama keeps the text
    before the stop ("The quick brown " for the stop "fox"), not only the whole tokens before it."""
    text = ""
    for token in tokens:
        text += token
        found = [text.find(stop) for stop in stops if stop and stop in text]
        if found:
            kept, cut, size = text[: min(found)], [], 0
            for piece in tokens:
                if size >= len(kept):
                    break
                cut.append(piece[: len(kept) - size])
                size += len(cut[-1])
            return cut
    return None


def plan_reply(
    *,
    model_name: str,
    prompt_text: str,
    num_predict: int,
    default_tokens: int,
    stop: list[str],
    reply: ReplyFunction | None = None,
    fmt: Any = None,
    tools: list[dict[str, Any]] | None = None,
    think: bool = False,
) -> Plan:
    """Decide the reply: tool calls, JSON document, custom ``reply`` tokens or the echo of the prompt.

    With tools offered, a ``reply`` that is nothing but JSON calls of offered tools becomes those
    calls (as Ollama parses a model's output); without ``reply``, the first tool the prompt names is
    called.
    """
    thinking = list(THINKING_TOKENS) if think else []
    if tools and reply is not None:
        calls = parse_tool_calls("".join(str(token) for token in reply(model_name, prompt_text)), tools)
    else:
        calls = _tool_calls(tools, prompt_text) if tools else []
    if calls:
        return Plan([], "stop", thinking, _numbered(calls))
    count = num_predict if num_predict > 0 else default_tokens
    if fmt is not None and fmt != "" and fmt != "null":
        text = "".join(echo_tokens(prompt_text, count))
        document = {"response": text} if fmt == "json" else _schema_value(fmt, text)
        return Plan(re.findall(r"\S+\s*", json.dumps(document)), "stop", thinking)
    if reply is not None:
        tokens = [str(token) for token in reply(model_name, prompt_text)]
        reason = "stop"
        if num_predict > 0 and len(tokens) > num_predict:
            tokens, reason = tokens[:num_predict], "length"
    else:
        tokens = echo_tokens(prompt_text, count)
        reason = "length" if num_predict > 0 else "stop"
    cut = _cut_at_stop(tokens, stop) if stop else None
    if cut is not None:
        tokens, reason = cut, "stop"
    return Plan(tokens, reason, thinking)


def context_ids(text: str) -> list[int]:
    """Stand-in token ids for ``context``: one per word, stable across runs."""
    return [zlib.crc32(word.encode()) % 128_000 for word in words(text)]


def metrics(
    *, total_ns: int, load_ns: int, prompt_count: int, prompt_ns: int, eval_count: int, eval_ns: int
) -> dict[str, int]:
    """The ``api.Metrics`` fields in Ollama's order, zero values omitted (``omitempty``)."""
    pairs = (
        ("total_duration", total_ns),
        ("load_duration", load_ns),
        ("prompt_eval_count", prompt_count),
        ("prompt_eval_duration", prompt_ns),
        ("eval_count", eval_count),
        ("eval_duration", eval_ns),
    )
    return {key: value for key, value in pairs if value}


@dataclass
class Run:
    """One scheduled generation: holds the runner lease until ``release()``."""

    request_model: str
    model: EmulatedModel
    plan: Plan
    prompt_tokens: int
    lease: Lease
    stats: EmulatorStats
    start_ns: int
    loaded_ns: int
    interval: float
    context: list[int] | None = None
    prompt_ns: int = 0
    eval_ns: int = 0

    async def pieces(self) -> AsyncGenerator[Piece, None]:
        """Wait for a parallel slot (FIFO, unbounded), then emit the plan one token at a time."""
        slots = self.lease.runner.slots
        await slots.acquire()
        self.stats.enter()
        try:
            began = time.perf_counter_ns()
            await asyncio.sleep(0)
            first = time.perf_counter_ns()
            self.prompt_ns = max(1, first - began)
            for token in self.plan.thinking:
                await self._token()
                yield ("thinking", token)
            for token in self.plan.tokens:
                await self._token()
                yield ("content", token)
            for call in self.plan.tool_calls:  # one chunk per call, as Ollama's parser emits them
                await self._token()
                yield ("tool_calls", [call])
            self.eval_ns = max(1, time.perf_counter_ns() - first) if self.plan.eval_count else 0
        finally:
            self.stats.leave()
            slots.release()
        # Done before the final chunk goes out, so a client that has it sees the model idle.
        self.stats.completed += 1
        self.release()

    async def _token(self) -> None:
        await _pace(self.interval)
        self.lease.runner.token()  # a real computation when the emulator runs on a GPU

    def metrics(self) -> dict[str, int]:
        now = time.perf_counter_ns()
        return metrics(
            total_ns=max(1, now - self.start_ns),
            load_ns=max(1, self.loaded_ns - self.start_ns),
            prompt_count=self.prompt_tokens,
            prompt_ns=self.prompt_ns,
            eval_count=self.plan.eval_count,
            eval_ns=self.eval_ns,
        )

    def release(self) -> None:
        self.lease.release()


async def _pace(interval: float) -> None:
    # Even at full speed yield to the loop, so a disconnect is noticed between tokens.
    await asyncio.sleep(interval if interval > 0 else 0)


def embedding(text: str, dimensions: int, normalise: bool) -> list[float]:
    """A deterministic vector for ``text``: hash bytes mapped to [-1, 1], optionally L2-normalised."""
    raw = hashlib.shake_256(text.encode()).digest(dimensions * 2)
    values = [value / 32767.5 - 1.0 for value in struct.unpack(f"<{dimensions}H", raw)]
    if normalise:
        norm = math.sqrt(sum(v * v for v in values)) or 1.0
        values = [v / norm for v in values]
    return [round(v, 8) for v in values]


def normalise(vector: list[float]) -> list[float]:
    norm = max(math.sqrt(sum(v * v for v in vector)), 1e-12)
    return [round(v / norm, 8) for v in vector]
