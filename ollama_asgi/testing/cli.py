"""Command-line front end: ``ollama-asgi emulate`` and ``python -m ollama_asgi.testing``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import orjson
import uvicorn

from ollama_asgi.testing.emulator import OllamaEmulator
from ollama_asgi.testing.gpu import (
    LOAD_PROFILE_H100,
    LOAD_PROFILE_H100_COLD,
    GpuBackend,
    GpuOptions,
    GpuUnavailable,
    attach_gpu,
)
from ollama_asgi.testing.models import DEFAULT_MODELS, EmulatedModel, models_from_json, parse_name
from ollama_asgi.testing.wire import parse_env_keep_alive

__all__ = [
    "LOAD_PROFILES",
    "REALISTIC_LOAD_BYTES_PER_SECOND",
    "REALISTIC_LOAD_SECONDS",
    "REALISTIC_TOKEN_INTERVAL",
    "add_emulate_arguments",
    "build_emulator",
    "load_models",
    "run_emulate",
]

# Without --fast: a small GPU's pace, so gateways see realistic timing.
REALISTIC_TOKEN_INTERVAL = 0.02
REALISTIC_LOAD_SECONDS = 0.5
REALISTIC_LOAD_BYTES_PER_SECOND = 2e9
LOAD_PROFILES = {"h100": LOAD_PROFILE_H100, "h100-cold": LOAD_PROFILE_H100_COLD}


def _env_int(name: str, default: int) -> int:
    """Ollama's rule: quotes and spaces stripped, an unparsable value falls back to the default."""
    text = os.environ.get(name, "").strip().strip("\"'")
    try:
        return int(text) if text else default
    except ValueError:
        return default


def _env_keep_alive() -> float:
    text = os.environ.get("OLLAMA_KEEP_ALIVE", "")
    try:
        return parse_env_keep_alive(text) if text.strip() else 300.0
    except ValueError:
        return 300.0


def add_emulate_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the emulator's options; defaults follow Ollama's environment variables where they exist."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=11434, help="port to bind (default: 11434)")
    parser.add_argument("--parallel", type=int, default=_env_int("OLLAMA_NUM_PARALLEL", 1) or 1)
    parser.add_argument("--max-queue", type=int, default=_env_int("OLLAMA_MAX_QUEUE", 512))
    parser.add_argument("--max-loaded-models", type=int, default=_env_int("OLLAMA_MAX_LOADED_MODELS", 3))
    parser.add_argument("--context-length", type=int, default=_env_int("OLLAMA_CONTEXT_LENGTH", 4096))
    parser.add_argument("--keep-alive", type=parse_env_keep_alive, default=_env_keep_alive(), metavar="DURATION")
    parser.add_argument("--token-interval", type=float, default=None, help="seconds between streamed tokens")
    parser.add_argument("--load-seconds", type=float, default=None, help="fixed model load time in seconds")
    parser.add_argument(
        "--vram-gb",
        type=float,
        default=None,
        help="memory budget for loaded models, GiB (default: 24, or the GPU's free memory)",
    )
    parser.add_argument(
        "--models",
        default=None,
        help="a JSON file of models, or a comma list of built-in names: "
        + ", ".join(model.name for model in DEFAULT_MODELS),
    )
    parser.add_argument("--fast", action="store_true", help="instant loads and tokens")
    parser.add_argument("--no-host-check", action="store_true", help="accept any Host and Origin header")
    parser.add_argument(
        "--load-profile",
        choices=sorted(LOAD_PROFILES),
        default=None,
        help="modelled load time measured on a real GPU (h100: weights in the page cache; h100-cold: from disk)",
    )
    gpu = parser.add_argument_group("GPU mode (needs PyTorch with CUDA)")
    gpu.add_argument("--gpu", action="store_true", help="back loads with real GPU memory and weights read from disk")
    gpu.add_argument("--gpu-device", type=int, default=0, help="CUDA device index (default: 0)")
    gpu.add_argument(
        "--weights-dir", default=None, help="where the weights file lives (default: ~/.cache/ollama-asgi/weights)"
    )
    gpu.add_argument(
        "--cold-cache", action="store_true", help="drop the weights file from the page cache before each load"
    )


def load_models(spec: str | None) -> list[EmulatedModel]:
    """``--models``: a path to a JSON list of model objects, or built-in names separated by commas."""
    if not spec:
        return list(DEFAULT_MODELS)
    path = Path(spec)
    if path.suffix == ".json" or path.is_file():
        return models_from_json(orjson.loads(path.read_bytes()))
    by_key = {model.parsed_name.key: model for model in DEFAULT_MODELS}
    chosen = []
    for name in filter(None, (part.strip() for part in spec.split(","))):
        parsed = parse_name(name)
        if parsed is None or parsed.key not in by_key:
            raise SystemExit(f"unknown model {name!r}; built-in models: {', '.join(m.name for m in DEFAULT_MODELS)}")
        chosen.append(by_key[parsed.key])
    return chosen


def build_emulator(args: argparse.Namespace) -> OllamaEmulator:
    interval = args.token_interval
    if interval is None:
        interval = 0.0 if args.fast else REALISTIC_TOKEN_INTERVAL
    if args.load_seconds is not None:
        base, rate = args.load_seconds, float("inf")
    elif args.fast:
        base, rate = 0.0, float("inf")
    elif args.load_profile:
        profile = LOAD_PROFILES[args.load_profile]
        base, rate = profile.base_seconds, profile.bytes_per_second
    else:
        base, rate = REALISTIC_LOAD_SECONDS, REALISTIC_LOAD_BYTES_PER_SECOND
    vram_bytes = int(args.vram_gb * 2**30) if args.vram_gb is not None else None
    emulator = OllamaEmulator(
        load_models(args.models),
        parallel=args.parallel,
        max_queue=args.max_queue,
        max_loaded_models=args.max_loaded_models,
        vram_bytes=vram_bytes if vram_bytes is not None else 24 * 2**30,
        default_num_ctx=args.context_length,
        default_keep_alive=args.keep_alive,
        load_base_seconds=base,
        load_bytes_per_second=rate,
        token_interval=interval,
        check_host=not args.no_host_check,
        check_origin=not args.no_host_check,
    )
    if args.gpu:
        options = GpuOptions(
            device=args.gpu_device,
            weights_dir=Path(args.weights_dir).expanduser() if args.weights_dir else None,
            cold_cache=args.cold_cache,
        )
        try:
            attach_gpu(emulator, options, vram_bytes=vram_bytes)
        except GpuUnavailable as exc:
            raise SystemExit(f"ollama-asgi emulate --gpu: {exc}") from None
    return emulator


def run_emulate(args: argparse.Namespace) -> int:
    """Serve the Ollama emulator in the foreground until interrupted."""
    emulator = build_emulator(args)
    device = emulator.scheduler.device
    where = f", on {device.describe()['device']}" if isinstance(device, GpuBackend) else ""
    print(f"Ollama emulator on http://{args.host}:{args.port} ({len(emulator.store)} models{where})", flush=True)
    config = uvicorn.Config(
        emulator,
        host=args.host,
        port=args.port,
        loop="asyncio",
        lifespan="on",
        log_level="warning",
        proxy_headers=False,
        server_header=False,
    )
    uvicorn.Server(config).run()
    return 0
