"""Hold another server's answers to real Ollama's, field by field.

Real Ollama is the oracle: the same request is sent to it and to the other side (the gateway in
front of it, or the emulator), each answer is reduced to a canonical form and the two forms must be
equal. The canonical form keeps status, media type, every field and every frame, and replaces only
what differs by nature from one call to the next (timestamps, durations, random ids). Anything else
that may differ is a named entry of :data:`DIFFERENCES`; a check lists the entries it allows, and
each entry's normaliser is applied to both answers, so an allowance never hides more than it says.
:func:`render` writes the table and the checks as ``docs/conformance.md``.

The module is long because :data:`DIFFERENCES` is one table, each entry with its normaliser and the
reason it is allowed; kept in one place, it is also what the document lists.
"""

from __future__ import annotations

import base64
import math
import re
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import orjson

__all__ = [
    "DIFFERENCES",
    "Answer",
    "Difference",
    "Planned",
    "canonical",
    "compare",
    "field_order",
    "framing_faults",
    "render",
]

Side = Literal["gateway", "emulator"]
Frame = Any


@dataclass(frozen=True)
class Answer:
    """One HTTP answer as received: status, headers and the body split into its frames."""

    status: int
    headers: Mapping[str, str]
    raw: bytes

    @property
    def media(self) -> str:
        return self.headers.get("content-type", "")

    @property
    def kind(self) -> str:
        media = self.media.split(";")[0].strip()
        if not self.raw:
            return "empty"
        return {"application/x-ndjson": "ndjson", "text/event-stream": "sse", "application/json": "json"}.get(
            media, "text"
        )

    def frames(self) -> list[Frame]:
        """JSON: the object; NDJSON: one object per line; SSE: one object (or ``"[DONE]"``) per event."""
        kind = self.kind
        if kind == "json":
            return [orjson.loads(self.raw)]
        if kind == "ndjson":
            return [orjson.loads(line) for line in self.raw.split(b"\n") if line]
        if kind == "sse":
            out: list[Frame] = []
            for event in self.raw.split(b"\n\n"):
                if not event:
                    continue
                data = event.removeprefix(b"data: ")
                out.append("[DONE]" if data == b"[DONE]" else orjson.loads(data))
            return out
        return [self.raw.decode("utf-8", "replace")]


def framing_faults(answer: Answer) -> list[str]:
    """How ``answer``'s body breaks Ollama's framing rules (empty when it keeps them).

    NDJSON: every line a JSON object ending in a newline; exactly one ``done: true`` object and it
    is last, unless the last line is an ``{"error": ...}`` line, which then ends the stream.
    SSE: every event one ``data:`` line and a blank line; ``data: [DONE]`` at most once, last (a
    stream an error cut short has none; whether one is due is for the answers' comparison to say).
    """
    faults: list[str] = []
    kind = answer.kind
    if kind == "ndjson":
        if not answer.raw.endswith(b"\n"):
            faults.append("the last line has no newline")
        try:
            lines = [orjson.loads(line) for line in answer.raw.split(b"\n") if line]
        except orjson.JSONDecodeError:
            return [*faults, "a line is not JSON"]
        if not all(isinstance(line, dict) for line in lines):
            faults.append("a line is not a JSON object")
            return faults
        finals = [i for i, line in enumerate(lines) if line.get("done") is True]
        if lines and "error" in lines[-1]:
            if finals:
                faults.append("a final chunk before the error line")
        elif finals != [len(lines) - 1]:
            faults.append(f"final chunks at {finals} of {len(lines)} lines (want exactly one, last)")
    elif kind == "sse":
        events = answer.raw.split(b"\n\n")
        if events[-1] != b"":
            faults.append("the last event is not ended by a blank line")
        events = [e for e in events if e]
        if not all(e.startswith(b"data: ") and b"\n" not in e for e in events):
            faults.append("an event is not a single data: line")
        done = [i for i, e in enumerate(events) if e == b"data: [DONE]"]
        if done not in ([], [len(events) - 1]):  # none: a stream an error cut short
            faults.append(f"[DONE] at {done} of {len(events)} events (want at most once, last)")
    return faults


# ----------------------------------------------------------------------------- canonical form

_DURATIONS = frozenset({"total_duration", "load_duration", "prompt_eval_duration", "eval_duration"})
_TIMES = frozenset({"created_at", "modified_at"})
_RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$")
_HEADERS = ("cache-control", "x-accel-buffering", "retry-after")
"""Headers compared besides ``Content-Type``: the ones a client's behaviour depends on."""
_IDS = re.compile(r"^(chatcmpl-|cmpl-|call_)[0-9a-z]+$")


def _expiry(text: str) -> str:
    """``expires_at`` as minutes from now (``forever`` past year 2200), so keep_alive shows."""
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", text)
    if match is None:
        return f"<not RFC 3339: {text}>"
    if int(text[:4]) > 2200:
        return "<forever>"
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    when = datetime.fromisoformat(match.group(1) + zone).timestamp()
    return f"<now+{round((when - time.time()) / 60)}m>"


def _scrub(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _scrub(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, key) for v in value]
    if key in _DURATIONS and isinstance(value, int) and value > 0:
        return "<ns>"
    if key in _TIMES and isinstance(value, str) and _RFC3339.match(value):
        return "<time>"
    if key == "expires_at" and isinstance(value, str):
        return _expiry(value)
    if key == "created" and isinstance(value, int) and value > 1_600_000_000:
        return "<unix>"
    if key == "id" and isinstance(value, str) and _IDS.match(value):
        return _IDS.sub(r"\1<id>", value)
    return value


def canonical(answer: Answer) -> dict[str, Any]:
    """Status, media type, the headers clients act on, and the scrubbed frames."""
    form: dict[str, Any] = {"status": answer.status, "content-type": answer.media, "kind": answer.kind}
    form["headers"] = {k: answer.headers[k] for k in _HEADERS if k in answer.headers}
    form["frames"] = _scrub(answer.frames())
    return form


# ----------------------------------------------------------------------------- normalisers

Normaliser = Callable[[dict[str, Any]], dict[str, Any]]


def _each_frame(form: dict[str, Any], change: Callable[[Any], Any]) -> dict[str, Any]:
    return {**form, "frames": [change(frame) for frame in form["frames"]]}


def _walk(value: Any, change: Callable[[str, Any], Any]) -> Any:
    if isinstance(value, dict):
        return {k: change(k, _walk(v, change)) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, change) for v in value]
    return value


def _mask(keys: Iterable[str], label: str) -> Normaliser:
    names = frozenset(keys)

    def normalise(form: dict[str, Any]) -> dict[str, Any]:
        return {**form, "frames": _walk(form["frames"], lambda k, v: label if k in names else v)}

    return normalise


def _error_text(form: dict[str, Any]) -> dict[str, Any]:
    """Error wording: the status and the body's shape stay; the message and charset go."""

    def frame(value: Any) -> Any:
        if isinstance(value, dict) and isinstance(value.get("error"), str):
            return {**value, "error": "<message>"}
        if isinstance(value, dict) and isinstance(value.get("error"), dict):
            return {**value, "error": {**value["error"], "message": "<message>"}}
        return value

    return {**_each_frame(form, frame), "content-type": form["content-type"].split(";")[0]}


def _delta_role(form: dict[str, Any]) -> dict[str, Any]:
    """Newest Ollama: ``role`` on the first delta only, no ``content: ""`` beside other fields."""
    first = True

    def frame(value: Any) -> Any:
        nonlocal first
        if not isinstance(value, dict) or value.get("object") != "chat.completion.chunk":
            return value
        choices = []
        for choice in value.get("choices") or []:
            delta = dict(choice.get("delta") or {})
            if not first:
                delta.pop("role", None)
            if delta.get("content") == "":
                del delta["content"]
            choices.append({**choice, "delta": delta})
        first = False
        return {**value, "choices": choices}

    return _each_frame(form, frame)


def _sorted_models(form: dict[str, Any]) -> dict[str, Any]:
    """Model lists (``/api/tags``, ``/v1/models``) in name order."""

    def frame(value: Any) -> Any:
        if isinstance(value, dict) and isinstance(value.get("models"), list):
            return {**value, "models": sorted(value["models"], key=lambda m: str(m.get("name")))}
        if isinstance(value, dict) and value.get("object") == "list" and isinstance(value.get("data"), list):
            return {**value, "data": sorted(value["data"], key=lambda m: str(m.get("id")))}
        return value

    return _each_frame(form, frame)


def _joined_stream(form: dict[str, Any]) -> dict[str, Any]:
    """A stream's text as one piece: where one side splits tokens differently."""
    frames = form["frames"]
    if form["kind"] not in ("ndjson", "sse") or not frames:
        return form
    pieces: list[Any] = []
    text: list[str] = []
    holder: Any = None
    for frame in frames:
        piece = _text_of(frame)
        if piece is None:
            if holder is not None:
                pieces.append(_with_text(holder, "".join(text)))
                holder, text = None, []
            pieces.append(frame)
        else:
            holder = holder or frame
            text.append(piece)
    if holder is not None:
        pieces.append(_with_text(holder, "".join(text)))
    return {**form, "frames": pieces}


def _text_of(frame: Any) -> str | None:
    """The text of a plain content chunk (no tool calls, not final), else None."""
    if not isinstance(frame, dict):
        return None
    if frame.get("done") is False:
        if "response" in frame and "thinking" not in frame:
            return str(frame["response"])
        message = frame.get("message") or {}
        if set(message) == {"role", "content"}:
            return str(message["content"])
        return None
    choices = frame.get("choices") or []
    if len(choices) == 1 and choices[0].get("finish_reason") is None:
        if "text" in choices[0]:
            return str(choices[0]["text"])
        delta = choices[0].get("delta") or {}
        if set(delta) <= {"role", "content"} and "content" in delta:
            return str(delta["content"])
    return None


def _with_text(frame: dict[str, Any], text: str) -> dict[str, Any]:
    if "response" in frame:
        return {**frame, "response": text}
    if "message" in frame:
        return {**frame, "message": {**frame["message"], "content": text}}
    choice = dict(frame["choices"][0])
    if "text" in choice:
        choice["text"] = text
    else:
        choice["delta"] = {**choice["delta"], "content": text}
    return {**frame, "choices": [choice]}


def _vector(value: Any) -> Any:
    """A vector by its shape: length, and whether it has unit length (L2-normalised)."""
    if isinstance(value, str):  # /v1 base64: little-endian float32s
        floats = struct.unpack(f"<{len(base64.b64decode(value)) // 4}f", base64.b64decode(value))
        return f"<base64 vector: {_shape(list(floats))}>"
    if isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
        return f"<vector: {_shape(value)}>"
    return value


def _shape(values: list[float]) -> str:
    norm = math.sqrt(sum(v * v for v in values))
    return f"{len(values)} values, {'unit length' if abs(norm - 1) < 1e-3 else 'not normalised'}"


def _vectors(form: dict[str, Any]) -> dict[str, Any]:
    def change(key: str, value: Any) -> Any:
        if key == "embeddings" and isinstance(value, list):
            return [_vector(v) for v in value]
        if key == "embedding":
            return _vector(value)
        return value

    return {**form, "frames": _walk(form["frames"], change)}


def _as(status: int, error: str | None, when: Callable[[int, str], bool]) -> Normaliser:
    """Ollama's error answer rewritten into the other side's (status, and text unless None), for
    exactly the errors ``when(status, text)`` picks."""

    def normalise(form: dict[str, Any]) -> dict[str, Any]:
        frames = form["frames"]
        body = frames[0] if len(frames) == 1 and isinstance(frames[0], dict) else {}
        found = body.get("error")
        if isinstance(found, str) and when(form["status"], found):
            return {**form, "status": status, "frames": [{"error": found if error is None else error}]}
        if isinstance(found, dict) and when(form["status"], str(found.get("message"))):  # /v1's shape
            kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
            text = found["message"] if error is None else error
            return {**form, "status": status, "frames": [{"error": {**found, "message": text, "type": kind}}]}
        return form

    return normalise


def _as_empty(status: int, when: Callable[[int, str], bool]) -> Normaliser:
    """A plain-text answer that ``when(status, text)`` picks, rewritten into an empty one."""

    def normalise(form: dict[str, Any]) -> dict[str, Any]:
        if form["kind"] == "text" and when(form["status"], form["frames"][0]):
            return {**form, "status": status, "content-type": "", "kind": "empty", "frames": [""]}
        return form

    return normalise


def _charset(form: dict[str, Any]) -> dict[str, Any]:
    return {**form, "content-type": form["content-type"].split(";")[0]}


def _stream_error(form: dict[str, Any]) -> dict[str, Any]:
    """The end of a /v1 stream an error cut short: Ollama's empty chunk of no model, or an error event."""
    frames = form["frames"]
    if form["kind"] != "sse" or not frames or not isinstance(frames[-1], dict):
        return form
    last = frames[-1]
    if "error" in last or (last.get("model") == "" and last.get("choices")):
        return {**form, "frames": [*frames[:-1], "<the stream cut short>"]}
    return form


def _json_error(form: dict[str, Any]) -> dict[str, Any]:
    """A plain-text error answered as ``{"error": text}``."""
    if form["kind"] != "text" or form["status"] < 400:
        return form
    return {
        **form,
        "kind": "json",
        "content-type": "application/json; charset=utf-8",
        "frames": [{"error": form["frames"][0]}],
    }


def _same(form: dict[str, Any]) -> dict[str, Any]:
    """No normaliser: the difference is shown by a check of its own, never allowed away."""
    return form


def _stream_headers(form: dict[str, Any]) -> dict[str, Any]:
    headers = {k: v for k, v in form["headers"].items() if k not in ("cache-control", "x-accel-buffering")}
    return {**form, "headers": headers}


def _model_files(form: dict[str, Any]) -> dict[str, Any]:
    masked = _mask(("model_info", "modelfile", "parent_model", "size", "size_vram"), "<model file>")(form)
    return _each_frame(masked, lambda f: {k: v for k, v in f.items() if k != "tensors"} if isinstance(f, dict) else f)


# ----------------------------------------------------------------------------- the table

_OPTION_TYPE = re.compile(r'^option "\w+" must be of type \w+$')


@dataclass(frozen=True)
class Difference:
    """One way the other side's answer may differ from real Ollama's, and why it is meant to."""

    key: str
    side: Side
    what: str
    where: str
    direct: str
    other: str
    why: str
    normalise: Normaliser = field(default=_same, repr=False, compare=False)


DIFFERENCES: tuple[Difference, ...] = (
    # -- the gateway ------------------------------------------------------------------------------
    Difference(
        "num_ctx",
        "gateway",
        "context size of a load",
        "/api/ps `context_length`, `size`",
        "the server's default (4096) or the client's `num_ctx`",
        "the gateway's bucket for the prompt (2048 for a short one)",
        "the gateway owns num_ctx: sticky buckets keep one runner per model instead of a reload per "
        "client setting (the num_ctx ping-pong)",
        _mask(("context_length", "size", "size_vram"), "<owned>"),
    ),
    Difference(
        "keep_alive",
        "gateway",
        "how long a model stays loaded",
        "/api/ps `expires_at`",
        "now + 5m (`OLLAMA_KEEP_ALIVE`) or the client's `keep_alive`",
        "now + the gateway's `keep_alive` (30m by default); an unload (`keep_alive: 0`) needs an admin key "
        "(403 otherwise)",
        "the gateway owns keep_alive, so one client cannot unload or pin a model for everyone",
        _mask(("expires_at",), "<owned>"),
    ),
    Difference(
        "refusal_wording",
        "gateway",
        "error text where the gateway refuses before Ollama",
        "a body that is not JSON or is cut short, fields of the wrong type, an empty body on /v1",
        "Go's decoder text (`unexpected EOF`, `EOF`), `application/json` on /v1",
        "the gateway's own text (`invalid JSON in request body: ...`, `missing request body`), same "
        "status and body shape",
        "the gateway parses each body once, before any upstream is chosen; a body it cannot read never reaches Ollama",
        _error_text,
    ),
    Difference(
        "model_required",
        "gateway",
        "a request without a model",
        "/api/generate, /api/embed, /v1/embeddings",
        "404 `model '' not found` (v0.24.0; newest: 400 `invalid model name`)",
        "400 `model is required`",
        "the gateway needs the model to place the request and answers before any upstream, as /api/chat does",
        _as(400, "model is required", lambda status, text: status == 404 and text == "model '' not found"),
    ),
    Difference(
        "option_type",
        "gateway",
        "a known option with the wrong type",
        "/api/generate, /api/chat",
        '500 `option "num_ctx" must be of type integer`',
        "400, the same text",
        "a malformed request is the client's error; Ollama's 500 would count against the backend's "
        "health and be retried",
        _as(400, None, lambda status, text: status == 500 and _OPTION_TYPE.match(text) is not None),
    ),
    Difference(
        "refusal_media",
        "gateway",
        "media type of the gateway's own /v1 errors",
        "/v1 errors the gateway answers itself (unknown model, no model)",
        "`application/json`",
        "`application/json; charset=utf-8`",
        "the gateway's own errors share one media type on both APIs; the body is the same",
        _charset,
    ),
    Difference(
        "v1_stream_error",
        "gateway",
        "a /v1 stream cut short by an error",
        "/v1/chat/completions, /v1/completions (stream)",
        "an empty chunk whose `model` is empty, then nothing (no `[DONE]`, no error text)",
        'an OpenAI error event `data: {"error": {...}}`, then nothing',
        "a client must be able to tell a stream cut short from a finished one; OpenAI clients raise the error",
        _stream_error,
    ),
    Difference(
        "route_errors",
        "gateway",
        "unknown routes and methods",
        "any path Ollama does not serve; a known path with another method",
        "gin's plain-text `404 page not found` / `405 method not allowed`",
        "the same status and text as a JSON error body",
        'every error the gateway answers itself is `{"error": ...}`, which Ollama\'s clients read',
        _json_error,
    ),
    Difference(
        "tags_order",
        "gateway",
        "order of the model list",
        "/api/tags, /v1/models",
        "newest first, then the store's order",
        "by name",
        "the list is merged from every backend; a name order is stable across them",
        _sorted_models,
    ),
    Difference(
        "stream_headers",
        "gateway",
        "headers on streams",
        "NDJSON and SSE streams",
        "none beyond `Content-Type`",
        "`Cache-Control: no-cache`, `X-Accel-Buffering: no`",
        "proxies in front of the host (nginx) must not buffer token streams",
        _stream_headers,
    ),
    Difference(
        "auth",
        "gateway",
        "authentication",
        "every route",
        "no authentication",
        "401 without a valid key or session; management routes 403 without an admin key",
        "the gateway is the policy point: users, allowed models, rate limits, admins",
    ),
    Difference(
        "backpressure",
        "gateway",
        "overload",
        "inference routes",
        "unbounded queue for a loaded model; 503 without `Retry-After` for loads",
        "429 (rate limit) or 503 (queue full, load wait) with `Retry-After`",
        "a bounded, fair queue with a deadline, and clients told when to come back",
    ),
    # -- versions (both sides follow the newest Ollama where v0.24.0 is older) ----------------------
    Difference(
        "delta_role",
        "gateway",
        "`role` and empty `content` in /v1 stream deltas",
        "/v1/chat/completions (stream)",
        'v0.24.0: `role` and `content: ""` in every delta, also the finish chunk\'s',
        "newest Ollama: `role` on the first delta only, the finish chunk's delta empty",
        "the gateway writes /v1 from the native API the way the newest Ollama does",
        _delta_role,
    ),
    Difference(
        "delta_role",
        "emulator",
        "`role` and empty `content` in /v1 stream deltas",
        "/v1/chat/completions (stream)",
        'v0.24.0: `role` and `content: ""` in every delta',
        "newest Ollama: `role` on the first delta only",
        "the emulator follows the newest Ollama",
        _delta_role,
    ),
    Difference(
        "preflight",
        "emulator",
        "OPTIONS without an Origin",
        "any route",
        "v0.24.0: 405 `405 method not allowed`",
        "newest Ollama: 204, no body",
        "the emulator follows the newest Ollama",
        _as_empty(204, lambda status, text: status == 405 and text == "405 method not allowed"),
    ),
    Difference(
        "tags_order",
        "emulator",
        "order of the model list",
        "/api/tags, /v1/models",
        "newest first by the second, then the store's own order",
        "newest first by the nanosecond",
        "the store's order on disk is not part of the protocol",
        _sorted_models,
    ),
    Difference(
        "version",
        "emulator",
        "version",
        "/api/version",
        "`0.24.0`",
        "the emulated version (`EMULATED_VERSION`)",
        "the emulator follows the newest Ollama's wire behaviour and says so",
        _mask(("version",), "<version>"),
    ),
    # -- the emulator -----------------------------------------------------------------------------
    Difference(
        "token_counts",
        "emulator",
        "token counts and token ids",
        "`prompt_eval_count`, `eval_count`, `usage`, `context`",
        "counts from the model's tokenizer and chat template",
        "counts of words plus a fixed template overhead; ids one per word",
        "the emulator has no tokenizer; counts keep their place, type and meaning, not their value",
        _mask(
            ("prompt_eval_count", "eval_count", "prompt_tokens", "completion_tokens", "total_tokens", "context"),
            "<count>",
        ),
    ),
    Difference(
        "chunking",
        "emulator",
        "where a streamed text is split",
        "NDJSON and SSE streams",
        "one chunk per token the tokenizer made",
        "one chunk per word of the reply",
        "the emulator has no tokenizer; the text, its order and the framing are the same",
        _joined_stream,
    ),
    Difference(
        "model_files",
        "emulator",
        "model facts it cannot know",
        "/api/show `model_info`, `modelfile`, `tensors`, `details.parent_model`; /api/ps `size`",
        "read from the GGUF file",
        "derived from the emulated model's description",
        "the emulator loads no files; names, capabilities, details, template and context length match",
        _model_files,
    ),
    Difference(
        "embedding_values",
        "emulator",
        "embedding vectors",
        "/api/embed, /api/embeddings, /v1/embeddings",
        "the model's vectors",
        "hash-derived vectors of the model's length (L2-normalised where Ollama normalises)",
        "the emulator runs no model; the shape, length and normalisation match",
        _vectors,
    ),
)


def differences(side: Side, keys: Iterable[str]) -> list[Difference]:
    """The table's entries for ``side`` named by ``keys`` (an unknown key is an error)."""
    wanted = list(keys)
    found = [d for d in DIFFERENCES if d.side == side and d.key in wanted]
    missing = set(wanted) - {d.key for d in found}
    if missing:
        raise KeyError(f"no {side} difference named {sorted(missing)}")
    return found


def compare(
    direct: Answer, other: Answer, side: Side, allowed: Iterable[str] = (), *, model: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both answers in canonical form, after the allowed differences' normalisers: assert them equal.

    ``model`` keeps only that model's entry of a ``models`` list (``/api/ps`` on a server that
    other requests also load models on).
    """
    mine, theirs = canonical(direct), canonical(other)
    if model is not None:
        mine, theirs = _only(mine, model), _only(theirs, model)
    for difference in differences(side, allowed):
        mine, theirs = difference.normalise(mine), difference.normalise(theirs)
    return mine, theirs


def _only(form: dict[str, Any], model: str) -> dict[str, Any]:
    def frame(value: Any) -> Any:
        if isinstance(value, dict) and isinstance(value.get("models"), list):
            return {**value, "models": [m for m in value["models"] if m.get("name") == model]}
        return value

    return _each_frame(form, frame)


def field_order(value: Any) -> Any:
    """The order of every object's fields, recursively (Go writes a struct's fields in declaration order)."""
    if isinstance(value, dict):
        return [(key, field_order(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [field_order(item) for item in value]
    return None


# ----------------------------------------------------------------------------- the document


@dataclass(frozen=True)
class Planned:
    """One check as the document lists it: what is sent, and what each side may differ in."""

    name: str
    request: str
    gateway: Sequence[str] = ()
    emulator: Sequence[str] = ()
    known: Mapping[str, str] = field(default_factory=dict)
    """Known defects by ``side`` (the answer) or ``side + " order"`` (its fields' order)."""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(
    checks: Sequence[Planned],
    shown: Sequence[tuple[str, Side, Sequence[str], str]],
    emulated_version: str,
    oracle: str,
) -> str:
    """``docs/conformance.md``: the table of differences and the checks that hold both sides to Ollama."""
    lines = [
        "# Conformance with real Ollama",
        "",
        "<!-- Written by tests/real/test_conformance.py from ollama_asgi/testing/conformance.py; "
        "do not edit by hand. -->",
        "",
        f"Every check sends the same request to a real `ollama serve` ({oracle}) and to the other side: the "
        "gateway in front of that server (its smallest context bucket set to Ollama's default, 4096, so "
        "both load models alike), or the emulator, set up with the same models, which says it is Ollama "
        f"{emulated_version}. The two answers are compared field by field: status, media type, the headers "
        "clients act on (`Cache-Control`, `X-Accel-Buffering`, `Retry-After`), every field of every frame and "
        "the order of the fields; and each answer's framing is checked: one JSON object per line with exactly "
        "one final chunk, last, or a terminal error line; SSE `data:` events ending in one `[DONE]`. "
        "Timestamps, durations and random ids are compared by shape, `expires_at` in minutes from now, and a "
        "single JSON body's trailing newline not at all. Token counts through the gateway are compared "
        "exactly, which shows it sends Ollama the prompt it was given. Any other difference must be a row of the table "
        "below, and a check allows only the rows it names; a known defect is a check expected to fail until "
        "it is fixed.",
        "",
        "## Intended differences",
        "",
        "| side | key | what | where | real Ollama | other side | why |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in DIFFERENCES:
        cells = (d.side, f"`{d.key}`", d.what, d.where, d.direct, d.other, d.why)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines += [
        "",
        "## Checks",
        "",
        "| check | request | gateway may differ in | emulator may differ in |",
        "|---|---|---|---|",
    ]
    for check in checks:
        row = [check.name, check.request]
        sides: tuple[tuple[Side, Sequence[str]], ...] = (("gateway", check.gateway), ("emulator", check.emulator))
        for side, keys in sides:
            text = ", ".join(f"`{k}`" for k in keys) or "nothing"
            for label, key in (("known defect", side), ("known defect in field order", f"{side} order")):
                if key in check.known:
                    text += f"; **{label}:** {check.known[key]}"
            row.append(text)
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    lines += [
        "",
        "## Tests of their own",
        "",
        "Sequences a single request cannot show, and the differences no check allows away, each shown happening.",
        "",
        "| test | difference shown | what it does |",
        "|---|---|---|",
    ]
    for test, side, keys, how in shown:
        differs = f"{side} " + ", ".join(f"`{key}`" for key in keys) if keys else "none"
        lines.append(f"| `{test}` | {differs} | {_cell(how)} |")
    return "\n".join(lines) + "\n"
