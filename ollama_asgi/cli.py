"""The ``ollama-asgi`` command: ``serve`` the gateway, ``emulate`` Ollama, ``doctor`` a setup."""

from __future__ import annotations

import argparse
import math
import socket
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ollama_asgi._version import __version__

if TYPE_CHECKING:
    import uvicorn

    from ollama_asgi.gateway import OllamaGateway

__all__ = ["main"]


_NO_UVICORN = "error: `ollama-asgi {command}` runs on uvicorn, which is not installed: pip install 'ollama-asgi[serve]'"


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        return _missing_uvicorn("serve")

    from ollama_asgi.errors import ConfigError
    from ollama_asgi.gateway import OllamaGateway
    from ollama_asgi.mount import PrefixDispatcher
    from ollama_asgi.settings import Settings

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    gateway = OllamaGateway(settings)
    app = PrefixDispatcher(gateway, args.prefix)
    if not args.default_gc:
        from ollama_asgi.gc_tuning import tune_gc

        tune_gc()  # this process is ours: everything imported and built so far is frozen
    print(f"ollama-asgi {__version__}: gateway at http://{args.host}:{args.port}{app.prefix}", file=sys.stderr)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        # the gateway ends what is left at drain_timeout itself; uvicorn's cancel is the backstop
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout) + 2,
    )
    server = _draining_server(config, gateway)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    return 0 if server.started else 3


def _draining_server(config: uvicorn.Config, gateway: OllamaGateway) -> uvicorn.Server:
    """A uvicorn server that tells the gateway to drain as soon as shutdown begins.

    uvicorn sends the lifespan shutdown event only after the last connection closed, too late to
    answer queued requests; this hook runs first, while the listener closes.
    """
    import uvicorn

    class DrainingServer(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            gateway.begin_shutdown()
            await super().shutdown(sockets=sockets)

    return DrainingServer(config)


def _missing_uvicorn(command: str) -> int:
    print(_NO_UVICORN.format(command=command), file=sys.stderr)
    return 2


def _doctor(args: argparse.Namespace) -> int:
    from ollama_asgi.doctor import run_doctor

    return run_doctor(timeout=args.timeout)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ollama-asgi", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ollama-asgi {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway at /llm in a minimal host (settings from OLLAMA_ASGI_*)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--prefix", default="/llm")
    serve.add_argument("--log-level", default="info")
    serve.add_argument(
        "--default-gc",
        action="store_true",
        help="keep CPython's garbage-collector settings (by default serve freezes startup objects and "
        "raises the young-generation threshold, see ollama_asgi.gc_tuning)",
    )
    serve.set_defaults(func=_serve)

    emulate = commands.add_parser("emulate", help="run the Ollama emulator (for tests and demos)")
    try:
        from ollama_asgi.testing.cli import add_emulate_arguments, run_emulate
    except ImportError:  # the emulator's server is uvicorn, from the serve extra: say so when it is asked for
        emulate.set_defaults(func=lambda args: _missing_uvicorn("emulate"), any_options=True)
    else:
        add_emulate_arguments(emulate)
        emulate.set_defaults(func=run_emulate)

    doctor = commands.add_parser("doctor", help="check settings (OLLAMA_ASGI_*), upstreams, Redis and GPUs")
    doctor.add_argument("--timeout", type=float, default=3.0, help="seconds allowed per network check")
    doctor.set_defaults(func=_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "any_options", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
