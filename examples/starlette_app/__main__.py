"""``python -m examples.starlette_app``: the demo host on ``127.0.0.1:$PORT`` (default 8000).

It uses the Ollama at ``$OLLAMA_HOST`` (default ``http://127.0.0.1:11434``) when one answers there,
and otherwise starts ollama-asgi's Ollama emulator in-process, so the demo runs on any machine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import urllib.request
from contextlib import ExitStack
from types import FrameType

import uvicorn

from examples.upstream import choose_upstream

from .accounts import ACCOUNTS
from .app import DEMO_API_KEY, GATEWAY_PREFIX, create_app, demo_settings

# Loopback probes must not go through an HTTP proxy configured in the environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def model_names(url: str, timeout: float = 2.0) -> list[str]:
    try:
        with _opener.open(url + "/api/tags", timeout=timeout) as resp:
            return [str(m["name"]) for m in json.load(resp).get("models", [])]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []


def example_model(names: list[str]) -> str:
    """The model the printed examples use: llama3.2 when present, else the first chat-looking one."""
    if not names or any(n.split(":")[0] == "llama3.2" for n in names):
        return "llama3.2"
    chat = [n for n in names if "embed" not in n]
    return (chat or names)[0].removesuffix(":latest")


def banner(base: str, backend: str, models: list[str]) -> str:
    model = example_model(models)
    api = base + GATEWAY_PREFIX
    auth = f"Authorization: Bearer {DEMO_API_KEY}"
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hello"}]}, separators=(",", ":"))
    demo_models = ", ".join(ACCOUNTS["demo"].models or ("all",))
    return f"""
ollama-asgi Starlette demo: {base}/
  sign in as  demo / demo-password    (ordinary user; models {demo_models})
          or  admin / admin-password  (administrator; all models, pull and delete)
  Ollama:     {backend}
  models:     {", ".join(models) or "(none listed)"}

curl, with the demo API key:
  curl -N {api}/api/chat -H '{auth}' -d '{body}'

Python, official ollama client:
  import ollama
  client = ollama.Client(host="{api}", headers={{"Authorization": "Bearer {DEMO_API_KEY}"}})
  for part in client.chat(model="{model}", messages=[{{"role": "user", "content": "hello"}}], stream=True): print(part.message.content, end="", flush=True)

Python, openai client:
  from openai import OpenAI
  client = OpenAI(base_url="{api}/v1", api_key="{DEMO_API_KEY}")
  print(client.chat.completions.create(model="{model}", messages=[{{"role": "user", "content": "hello"}}]).choices[0].message.content)
"""


def _exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main() -> int:
    # uvicorn shuts down gracefully on Ctrl-C or SIGTERM and then raises the signal again; ending
    # with SystemExit stops the emulator on the way out and spares a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, _exit)
    signal.signal(signal.SIGTERM, _exit)
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

        print(banner(f"http://127.0.0.1:{port}", backend, model_names(upstream)), flush=True)
        config = uvicorn.Config(create_app(demo_settings(upstream)), host="127.0.0.1", port=port, log_level="info")
        uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
