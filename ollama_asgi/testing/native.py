"""The native inference routes: /api/generate, /api/chat, /api/embed and /api/embeddings."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator
from typing import Any

from ollama_asgi.testing.generation import TEMPLATE_OVERHEAD, Run, embedding, normalise, plan_reply, words
from ollama_asgi.testing.generation import context_ids as make_context_ids
from ollama_asgi.testing.gojson import decode_request
from ollama_asgi.testing.handler import EmulatorState
from ollama_asgi.testing.models import EmulatedModel, parse_name
from ollama_asgi.testing.responses import NDJSON, Exchange, ndjson_error_line
from ollama_asgi.testing.wire import ApiError, StreamStartError, dumps, go_quote, rfc3339

__all__ = [
    "chat",
    "collect",
    "embed",
    "embeddings",
    "generate",
    "load_reply",
    "prepare_chat",
    "prepare_generate",
    "run_embed",
]


def _think(model: EmulatedModel, think: Any, name: str) -> bool:
    if think not in (None, False) and "thinking" not in model.capabilities:
        raise ApiError(400, f"{go_quote(name)} does not support thinking")
    if isinstance(think, str):
        # string levels are only for harmony (gpt-oss) models, which the catalogue does not model
        raise ApiError(400, f"think value {go_quote(think)} is not supported for this model")
    if "thinking" in model.capabilities:
        return think is None or bool(think)
    if think is True:
        raise ApiError(400, f"{go_quote(name)} does not support thinking")
    return False


def _check_format(req: dict[str, Any]) -> None:
    """``format`` is "json" or a JSON schema object; anything else fails in the runner (500)."""
    fmt = req.get("format")
    if fmt is None or fmt in ("", "json") or isinstance(fmt, dict):
        return
    message = f'invalid format: {go_quote(dumps(fmt).decode())}; expected "json" or a valid JSON Schema object'
    raise (StreamStartError if req.get("stream", True) else ApiError)(500, message)


def _missing_capability(model: EmulatedModel, capability: str) -> ApiError:
    return ApiError(400, f"{model.parsed_name.full} does not support {capability}")


async def prepare_generate(emu: EmulatorState, ex: Exchange, req: dict[str, Any]) -> Run | str:
    """Validate and schedule a generate request; a str result is the "load"/"unload" done_reason."""
    name = req.get("model", "")
    model = emu.lookup(name)
    if model is None:
        raise ApiError(404, f"model '{name}' not found")
    prompt, keep_alive = req.get("prompt", ""), req.get("keep_alive")
    if prompt == "" and keep_alive == 0:
        emu.scheduler.bind()
        emu.scheduler.expire(model)
        return "unload"
    raw = bool(req.get("raw"))
    if raw and (req.get("template") or req.get("system") or req.get("context")):
        raise ApiError(400, "raw mode does not support template, system, or context")
    think = _think(model, req.get("think"), name)
    if "completion" not in model.capabilities:
        raise ApiError(400, f"{go_quote(name)} does not support generate")
    if req.get("suffix") and "insert" not in model.capabilities:
        raise _missing_capability(model, "insert")
    options = emu.options_for(model, req.get("options"))
    runner_options = options.runner(model.context_length, "vision" in model.capabilities)
    lease = await emu.scheduler.acquire(model, runner_options, keep_alive)
    loaded = time.perf_counter_ns()
    if prompt == "":
        lease.release()
        return "load"
    try:
        _check_format(req)
    except ApiError:
        lease.release()
        raise
    system = req.get("system") or model.system
    count = len(words(prompt)) + (0 if raw else len(words(system)) + TEMPLATE_OVERHEAD)
    plan = plan_reply(
        model_name=model.name,
        prompt_text=prompt,
        num_predict=options.num_predict,
        default_tokens=emu.default_reply_tokens,
        stop=options.stop,
        reply=emu.reply,
        fmt=req.get("format"),
        think=think,
    )
    return Run(
        request_model=name,
        model=model,
        plan=plan,
        prompt_tokens=min(count, runner_options.num_ctx),
        lease=lease,
        stats=emu.stats,
        start_ns=ex.started_ns,
        loaded_ns=loaded,
        interval=emu.interval_for(ex),
        context=None if raw else make_context_ids(prompt + " " + "".join(plan.tokens)),
    )


def _fit_messages(messages: list[dict[str, Any]], num_ctx: int) -> int:
    """Prompt tokens after Ollama's silent truncation: drop the oldest non-system messages."""
    kept = list(messages)

    def size() -> int:
        return sum(len(words(m.get("content") or "")) for m in kept) + TEMPLATE_OVERHEAD

    while size() > num_ctx and len(kept) > 1:
        index = next((i for i, m in enumerate(kept[:-1]) if m.get("role") != "system"), None)
        if index is None:
            break
        kept.pop(index)
    return min(size(), num_ctx)


async def prepare_chat(emu: EmulatorState, ex: Exchange, req: dict[str, Any]) -> Run | str:
    """Validate and schedule a chat request; a str result is the "load"/"unload" done_reason."""
    name = req.get("model", "")
    if parse_name(name) is None:
        raise ApiError(400, "model is required")
    model = emu.lookup(name)
    if model is None:
        raise ApiError(404, f"model '{name}' not found")
    # A null message decodes to Go's zero Message (no role, no content), as Ollama reads it.
    messages: list[dict[str, Any]] = [m if isinstance(m, dict) else {} for m in req.get("messages") or []]
    keep_alive = req.get("keep_alive")
    if not messages and keep_alive == 0:
        emu.scheduler.bind()
        emu.scheduler.expire(model)
        return "unload"
    tools = req.get("tools") or []
    think = _think(model, req.get("think"), name)
    if "completion" not in model.capabilities:
        raise ApiError(400, f"{go_quote(name)} does not support chat")
    if tools and "tools" not in model.capabilities:
        raise _missing_capability(model, "tools")
    options = emu.options_for(model, req.get("options"))
    runner_options = options.runner(model.context_length, "vision" in model.capabilities)
    lease = await emu.scheduler.acquire(model, runner_options, keep_alive)
    loaded = time.perf_counter_ns()
    if not messages:
        lease.release()
        return "load"
    try:
        _check_format(req)
    except ApiError:
        lease.release()
        raise
    if model.system and messages[0].get("role") != "system":
        messages = [{"role": "system", "content": model.system}, *messages]
    user = [m.get("content") or "" for m in messages if m.get("role") == "user"]
    prompt_text = user[-1] if user else ""
    plan = plan_reply(
        model_name=model.name,
        prompt_text=prompt_text,
        num_predict=options.num_predict,
        default_tokens=emu.default_reply_tokens,
        stop=options.stop,
        reply=emu.reply,
        fmt=req.get("format"),
        tools=tools,
        think=think,
    )
    return Run(
        request_model=name,
        model=model,
        plan=plan,
        prompt_tokens=_fit_messages(messages, runner_options.num_ctx),
        lease=lease,
        stats=emu.stats,
        start_ns=ex.started_ns,
        loaded_ns=loaded,
        interval=emu.interval_for(ex),
    )


# ----------------------------------------------------------------------------- /api/generate


def load_reply(kind: str, model: str, reason: str) -> bytes:
    if kind == "chat":
        message = {"role": "assistant", "content": ""}
        return dumps({"model": model, "created_at": rfc3339(), "message": message, "done": True, "done_reason": reason})
    return dumps({"model": model, "created_at": rfc3339(), "response": "", "done": True, "done_reason": reason})


def _generate_final(run: Run, response: str = "", thinking: str = "") -> dict[str, Any]:
    final: dict[str, Any] = {"model": run.request_model, "created_at": rfc3339(), "response": response}
    if thinking:
        final["thinking"] = thinking
    final["done"] = True
    final["done_reason"] = run.plan.done_reason
    if run.context:
        final["context"] = run.context
    final.update(run.metrics())
    return final


async def _generate_lines(run: Run) -> AsyncGenerator[bytes, None]:
    async with contextlib.aclosing(run.pieces()) as pieces:
        async for kind, value in pieces:
            chunk: dict[str, Any] = {"model": run.request_model, "created_at": rfc3339()}
            chunk["response"] = value if kind == "content" else ""
            if kind == "thinking":
                chunk["thinking"] = value
            chunk["done"] = False
            yield dumps(chunk) + b"\n"
    yield dumps(_generate_final(run)) + b"\n"


async def collect(run: Run) -> tuple[str, str, list[Any]]:
    """Run a generation to the end; the concatenated content, thinking and tool calls."""
    content, thinking, calls = [], [], []
    async with contextlib.aclosing(run.pieces()) as pieces:
        async for kind, value in pieces:
            if kind == "content":
                content.append(value)
            elif kind == "thinking":
                thinking.append(value)
            else:
                calls.extend(value)
    return "".join(content), "".join(thinking), calls


async def generate(emu: EmulatorState, ex: Exchange) -> None:
    req = decode_request(ex.body, "GenerateRequest")
    outcome = await prepare_generate(emu, ex, req)
    if isinstance(outcome, str):
        await ex.responder.json(200, load_reply("generate", req.get("model", ""), outcome))
        return
    try:
        if req.get("stream", True):
            await ex.responder.stream(_generate_lines(outcome), NDJSON, ndjson_error_line)
        else:
            content, thinking, _ = await collect(outcome)
            await ex.responder.json(200, dumps(_generate_final(outcome, content, thinking)))
    finally:
        outcome.release()


# ----------------------------------------------------------------------------- /api/chat


def _message(content: str = "", thinking: str = "", calls: list[Any] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    if calls:
        message["tool_calls"] = calls
    return message


def _chat_final(run: Run, message: dict[str, Any]) -> dict[str, Any]:
    final: dict[str, Any] = {"model": run.request_model, "created_at": rfc3339(), "message": message}
    final.update({"done": True, "done_reason": run.plan.done_reason}, **run.metrics())
    return final


async def _chat_lines(run: Run) -> AsyncGenerator[bytes, None]:
    async with contextlib.aclosing(run.pieces()) as pieces:
        async for kind, value in pieces:
            if kind == "content":
                message = _message(value)
            elif kind == "thinking":
                message = _message(thinking=value)
            else:
                message = _message(calls=value)
            chunk = {"model": run.request_model, "created_at": rfc3339(), "message": message, "done": False}
            yield dumps(chunk) + b"\n"
    yield dumps(_chat_final(run, _message())) + b"\n"


async def chat(emu: EmulatorState, ex: Exchange) -> None:
    req = decode_request(ex.body, "ChatRequest")
    outcome = await prepare_chat(emu, ex, req)
    if isinstance(outcome, str):
        await ex.responder.json(200, load_reply("chat", req.get("model", ""), outcome))
        return
    try:
        if req.get("stream", True):
            await ex.responder.stream(_chat_lines(outcome), NDJSON, ndjson_error_line)
        else:
            content, thinking, calls = await collect(outcome)
            await ex.responder.json(200, dumps(_chat_final(outcome, _message(content, thinking, calls))))
    finally:
        outcome.release()


# ----------------------------------------------------------------------------- embeddings


def _embed_inputs(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise ApiError(400, "invalid input type")


async def run_embed(emu: EmulatorState, ex: Exchange, req: dict[str, Any]) -> dict[str, Any]:
    """The ``/api/embed`` response object (shared with /v1/embeddings)."""
    inputs = _embed_inputs(req.get("input"))
    name = req.get("model", "")
    model = emu.lookup(name)
    if model is None and parse_name(name) is None:
        raise ApiError(404, f"model '{name}' not found")  # the name check's wording, not the pull hint
    if model is None:
        raise ApiError(404, f"model {go_quote(name)} not found, try pulling it first")
    options = emu.options_for(model, req.get("options"))
    runner_options = options.runner(model.context_length, "vision" in model.capabilities)
    lease = await emu.scheduler.acquire(model, runner_options, req.get("keep_alive"))
    loaded = time.perf_counter_ns()
    try:
        if not inputs:
            return {"model": name, "embeddings": []}
        limit, count, texts = min(runner_options.num_ctx, model.context_length), 0, []
        for text in inputs:
            tokens = words(text)
            if len(tokens) > limit:
                if req.get("truncate") is False:
                    raise ApiError(400, "the input length exceeds the context length")
                tokens = tokens[:limit]
                text = " ".join(tokens)
            count += len(tokens)
            texts.append(text)
        slots = lease.runner.slots
        await slots.acquire()
        emu.stats.enter()
        try:
            await emu.pace(ex)
            vectors = [embedding(text, model.dimensions, normalise=True) for text in texts]
        finally:
            emu.stats.leave()
            slots.release()
        dimensions = req.get("dimensions") or 0
        if 0 < dimensions < model.dimensions:
            vectors = [normalise(vector[:dimensions]) for vector in vectors]
        response: dict[str, Any] = {"model": name, "embeddings": vectors}
        response["total_duration"] = max(1, time.perf_counter_ns() - ex.started_ns)
        response["load_duration"] = max(1, loaded - ex.started_ns)
        if count:
            response["prompt_eval_count"] = count
        return response
    finally:
        lease.release()


async def embed(emu: EmulatorState, ex: Exchange) -> None:
    response = await run_embed(emu, ex, decode_request(ex.body, "EmbedRequest"))
    emu.stats.completed += 1
    await ex.responder.json(200, dumps(response))


async def embeddings(emu: EmulatorState, ex: Exchange) -> None:
    """The legacy endpoint: one prompt, float64 values, not normalised."""
    req = decode_request(ex.body, "EmbeddingRequest")
    name = req.get("model", "")
    if parse_name(name) is None:
        raise ApiError(400, "model is required")
    model = emu.lookup(name)
    if model is None:
        raise ApiError(404, f"model {go_quote(name)} not found, try pulling it first")
    options = emu.options_for(model, req.get("options"))
    runner_options = options.runner(model.context_length, "vision" in model.capabilities)
    lease = await emu.scheduler.acquire(model, runner_options, req.get("keep_alive"))
    try:
        prompt = req.get("prompt", "")
        vector: list[float] = []
        if prompt:
            slots = lease.runner.slots
            await slots.acquire()
            emu.stats.enter()
            try:
                await emu.pace(ex)
                vector = embedding(prompt, model.dimensions, normalise=False)
            finally:
                emu.stats.leave()
                slots.release()
    finally:
        lease.release()
    emu.stats.completed += 1
    await ex.responder.json(200, dumps({"embedding": vector}))
