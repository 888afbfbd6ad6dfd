"""``python -m examples.django_app``: migrate, create the demo users, serve on ``127.0.0.1:$PORT``.

Uses the Ollama at ``$OLLAMA_HOST`` (default ``http://127.0.0.1:11434``) when one answers there,
otherwise ollama-asgi's Ollama emulator, so the demo runs on any machine. The SQLite database
lives in ``.demo/`` (or ``$DJANGO_DEMO_DATA``).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from contextlib import ExitStack

import uvicorn

from examples.upstream import choose_upstream

BANNER = """
ollama-asgi Django demo: {base}/
  sign in as  demo / demo-password    (group llm-users: llama3.2*, qwen2.5*)
          or  admin / admin-password  (staff: every model, pull and delete; also {base}/admin/)
  Ollama:     {backend}

curl, with the demo API key from settings.OLLAMA_ASGI:
  curl -N {base}/llm/api/chat -H 'Authorization: Bearer demo-api-key-123' \\
       -d '{{"model":"llama3.2","messages":[{{"role":"user","content":"hello"}}]}}'

an API key stored in the database (the secret is printed once):
  python -m examples.django_app.manage ollama_api_key my-script --models 'llama3.2*'
"""


def _listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


def _prepare_django(upstream: str) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_app.settings")
    os.environ["OLLAMA_HOST"] = upstream
    import django
    from django.conf import settings
    from django.core.management import call_command

    django.setup()
    settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
    call_command("migrate", verbosity=0, interactive=False)
    call_command("create_demo_users")
    call_command("check")


async def _serve(sock: socket.socket) -> None:
    from examples.django_app.asgi import application
    from ollama_asgi.contrib.django import conf

    # Django rejects lifespan events, so the gateway's upstream connections are closed here.
    server = uvicorn.Server(uvicorn.Config(application, lifespan="off", log_level="info"))
    try:
        await server.serve(sockets=[sock])
    finally:
        gateway = conf.built_gateway()
        if gateway is not None:
            await gateway.aclose()


def main() -> int:
    try:
        port = int(os.environ.get("PORT") or 8000)
    except ValueError:
        print(f"error: PORT must be a number, got {os.environ['PORT']!r}", file=sys.stderr)
        return 2
    with ExitStack() as stack:
        try:
            sock = stack.enter_context(_listen(port))
        except OSError as exc:
            print(
                f"error: cannot listen on 127.0.0.1:{port} ({exc.strerror}); set PORT to a free port", file=sys.stderr
            )
            return 1
        upstream, backend = choose_upstream(os.environ.get("OLLAMA_HOST", ""), stack)
        _prepare_django(upstream)
        print(BANNER.format(base=f"http://127.0.0.1:{port}", backend=backend), flush=True)
        asyncio.run(_serve(sock))
    return 0


if __name__ == "__main__":
    sys.exit(main())
