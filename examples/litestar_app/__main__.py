"""``python -m examples.litestar_app``: the demo host on ``127.0.0.1:$PORT`` (default 8000).

Uses the Ollama at ``$OLLAMA_HOST`` (default ``http://127.0.0.1:11434``) when one answers there,
otherwise ollama-asgi's Ollama emulator, so the demo runs on any machine.
"""

from __future__ import annotations

import os
import socket
import sys
from contextlib import ExitStack

import uvicorn

from examples.litestar_app.app import DEMO_API_KEY, GATEWAY_PREFIX, create_app, demo_settings
from examples.upstream import choose_upstream

BANNER = """
ollama-asgi Litestar demo: {base}/
  sign in as  demo / demo-password    (models llama3.2*, qwen2.5*)
          or  admin / admin-password  (administrator: every model, pull and delete)
  Ollama:     {backend}

curl, with the demo API key:
  curl -N {api}/api/chat -H 'Authorization: Bearer {key}' \\
       -d '{{"model":"llama3.2","messages":[{{"role":"user","content":"hello"}}]}}'
"""


def main() -> int:
    try:
        port = int(os.environ.get("PORT") or 8000)
    except ValueError:
        print(f"error: PORT must be a number, got {os.environ['PORT']!r}", file=sys.stderr)
        return 2
    with ExitStack() as stack:
        sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            print(
                f"error: cannot listen on 127.0.0.1:{port} ({exc.strerror}); set PORT to a free port", file=sys.stderr
            )
            return 1
        upstream, backend = choose_upstream(os.environ.get("OLLAMA_HOST", ""), stack)
        base = f"http://127.0.0.1:{port}"
        print(BANNER.format(base=base, api=base + GATEWAY_PREFIX, key=DEMO_API_KEY, backend=backend), flush=True)
        app = create_app(demo_settings(upstream))
        uvicorn.Server(uvicorn.Config(app, log_level="info")).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
