"""The Starlette example app does what its banner and the README promise.

The app is served by uvicorn over a real socket with the gateway pointed at the Ollama emulator,
and driven with the clients its users would use: a browser-like form post, the official ``ollama``
client with the session cookie or the API key, and the ``openai`` client.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import ollama
import openai
import pytest

from examples.starlette_app import CSRF_COOKIE, CSRF_HEADER, DEMO_API_KEY, create_app, demo_settings
from ollama_asgi.testing import EmulatorServer
from tests.support.server import ServerThread

REPO = Path(__file__).resolve().parents[2]
KEY = {"Authorization": f"Bearer {DEMO_API_KEY}"}
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def emulator_server() -> Iterator[EmulatorServer]:
    with EmulatorServer(token_interval=0.01) as srv:
        yield srv


@pytest.fixture(scope="module")
def site(emulator_server: EmulatorServer) -> Iterator[str]:
    app = create_app(demo_settings(emulator_server.url), secret_key=b"test-secret-key-for-sessions")
    with ServerThread(app) as server:
        yield server.url


def sign_in(site: str, username: str, password: str) -> dict[str, Any]:
    """Sign in through the login route; returns the ``cookies`` and CSRF ``headers`` a page would send."""
    response = httpx.post(f"{site}/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    token = response.cookies[CSRF_COOKIE]
    return {"cookies": {"session": response.cookies["session"], CSRF_COOKIE: token}, "headers": {CSRF_HEADER: token}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- signing in ----------------------------------------------------------------------------------


def test_signed_in_user_streams_a_chat_with_the_ollama_client(site: str) -> None:
    client = ollama.Client(host=f"{site}/llm", **sign_in(site, "demo", "demo-password"))

    parts = list(client.chat(model="llama3.2", messages=HELLO, stream=True))

    assert len(parts) > 2
    assert parts[-1].done
    assert "".join(part.message.content or "" for part in parts).strip()


def test_chat_stream_passes_through_gzip_line_by_line(site: str) -> None:
    session = sign_in(site, "demo", "demo-password")
    arrivals: list[float] = []
    with httpx.stream(
        "POST",
        f"{site}/llm/api/chat",
        json={"model": "llama3.2", "messages": HELLO},
        cookies=session["cookies"],
        headers={**session["headers"], "Accept-Encoding": "gzip"},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-encoding"] == "identity"
        for line in response.iter_lines():
            if line:
                arrivals.append(time.monotonic())

    assert len(arrivals) > 3
    # A buffering middleware would deliver every line at once, at the end; tokens come 10 ms apart,
    # and a busy machine may hand two of them over together.
    assert arrivals[-1] - arrivals[0] >= 0.005 * (len(arrivals) - 1)


def test_sign_in_form_redirects_home_with_a_session_cookie(site: str) -> None:
    response = httpx.post(f"{site}/login", data={"username": "demo", "password": "demo-password"})

    assert response.status_code == 303
    assert response.headers["location"] == f"{site}/"
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie


def test_home_page_shows_the_chat_box_to_a_signed_in_user(site: str) -> None:
    response = httpx.get(f"{site}/", cookies=sign_in(site, "admin", "admin-password")["cookies"])

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "Administrator" in response.text
    assert 'data-api="/llm"' in response.text
    assert f'data-csrf-header="{CSRF_HEADER}"' in response.text
    assert '<form id="ask">' in response.text
    assert '"/api/chat"' in response.text


def test_home_page_restores_a_missing_csrf_cookie(site: str) -> None:
    session = sign_in(site, "demo", "demo-password")["cookies"]

    response = httpx.get(f"{site}/", cookies={"session": session["session"]})

    assert response.status_code == 200
    assert response.cookies[CSRF_COOKIE]


def test_home_page_sends_anonymous_visitors_to_sign_in(site: str) -> None:
    response = httpx.get(f"{site}/")

    assert response.status_code == 303
    assert response.headers["location"] == f"{site}/login"
    form = httpx.get(f"{site}/login")
    assert form.status_code == 200
    assert 'name="password"' in form.text


@pytest.mark.parametrize(
    ("username", "password"), [("demo", "admin-password"), ("nobody", "demo-password"), ("demo", "")]
)
def test_wrong_credentials_set_no_cookie(site: str, username: str, password: str) -> None:
    as_json = httpx.post(f"{site}/login", json={"username": username, "password": password})
    as_form = httpx.post(f"{site}/login", data={"username": username, "password": password})

    assert (as_json.status_code, as_form.status_code) == (401, 401)
    assert "set-cookie" not in as_json.headers and "set-cookie" not in as_form.headers
    assert "Invalid username or password" in as_form.text


def test_sign_out_clears_the_session_cookie(site: str) -> None:
    response = httpx.post(f"{site}/logout", cookies=sign_in(site, "demo", "demo-password")["cookies"])

    assert response.status_code == 303
    assert response.headers["location"] == f"{site}/login"
    cleared = response.headers.get_list("set-cookie")
    assert any(c.startswith('session=""') and "Max-Age=0" in c for c in cleared)
    assert any(c.startswith(f'{CSRF_COOKIE}=""') and "Max-Age=0" in c for c in cleared)


# -- who may call the gateway --------------------------------------------------------------------


def test_anonymous_caller_gets_401(site: str) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        ollama.Client(host=f"{site}/llm").chat(model="llama3.2", messages=HELLO)

    assert caught.value.status_code == 401


def test_signed_in_post_without_the_csrf_token_is_refused(site: str) -> None:
    session = sign_in(site, "demo", "demo-password")
    body = {"model": "llama3.2", "messages": HELLO, "stream": False}

    forged = httpx.post(f"{site}/llm/api/chat", json=body, cookies=session["cookies"])
    wrong = httpx.post(f"{site}/llm/api/chat", json=body, cookies=session["cookies"], headers={CSRF_HEADER: "x"})
    listing = httpx.get(f"{site}/llm/api/tags", cookies=session["cookies"])

    assert (forged.status_code, wrong.status_code) == (403, 403)
    assert "CSRF" in forged.json()["error"]
    assert listing.status_code == 200  # reads need no token


def test_tampered_session_cookie_counts_as_anonymous(site: str) -> None:
    payload, _, signature = sign_in(site, "demo", "demo-password")["cookies"]["session"].partition(".")
    forged = {"session": f"{payload}.{signature[::-1]}"}

    response = httpx.get(f"{site}/llm/api/tags", cookies=forged)

    assert response.status_code == 401


def test_api_key_serves_the_ollama_and_openai_clients(site: str) -> None:
    models = ollama.Client(host=f"{site}/llm", headers=KEY).list().models
    answer = openai.OpenAI(base_url=f"{site}/llm/v1", api_key=DEMO_API_KEY).chat.completions.create(
        model="llama3.2", messages=[{"role": "user", "content": "hello"}]
    )

    assert "llama3.2:latest" in {m.model for m in models}
    assert answer.choices[0].message.content


def test_unknown_api_key_gets_401(site: str) -> None:
    response = httpx.get(f"{site}/llm/api/tags", headers={"Authorization": "Bearer not-the-demo-key"})

    assert response.status_code == 401
    assert response.json() == {"error": "authentication required"}


def test_demo_user_may_run_only_its_models(site: str) -> None:
    client = ollama.Client(host=f"{site}/llm", **sign_in(site, "demo", "demo-password"))

    assert client.generate(model="qwen2.5:0.5b", prompt="hi").response
    with pytest.raises(ollama.ResponseError) as caught:
        client.embed(model="nomic-embed-text", input="hi")
    assert caught.value.status_code == 403


def test_admin_may_run_every_model(site: str) -> None:
    client = ollama.Client(host=f"{site}/llm", **sign_in(site, "admin", "admin-password"))

    assert client.embed(model="nomic-embed-text", input="hi").embeddings


def test_demo_user_cannot_pull_but_admin_can(site: str) -> None:
    demo = ollama.Client(host=f"{site}/llm", **sign_in(site, "demo", "demo-password"))
    admin = ollama.Client(host=f"{site}/llm", **sign_in(site, "admin", "admin-password"))

    with pytest.raises(ollama.ResponseError) as caught:
        demo.pull("llama3.2")
    assert caught.value.status_code == 403
    assert admin.pull("llama3.2").status == "success"


# -- python -m examples.starlette_app ------------------------------------------------------------


class Demo:
    """``python -m examples.starlette_app`` in a subprocess, its output collected as it runs."""

    def __init__(self, ollama_host: str) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.env = {**os.environ, "PORT": self.url.rsplit(":", 1)[1], "OLLAMA_HOST": ollama_host}
        self.env["PYTHONUNBUFFERED"] = "1"
        self.lines: list[str] = []

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def __enter__(self) -> Demo:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "examples.starlette_app"],
            cwd=REPO,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(f"{self.url}/login", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"the demo did not start:\n{self.output}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            code = self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(5)
        self.reader.join(5)
        return code

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()


def test_demo_command_falls_back_to_the_emulator_when_no_ollama_answers() -> None:
    with Demo(ollama_host=f"http://127.0.0.1:{free_port()}") as demo:
        tags = httpx.get(f"{demo.url}/llm/api/tags", headers=KEY, timeout=10)
        anonymous = httpx.get(f"{demo.url}/llm/api/tags", timeout=10)
        code = demo.stop()

    assert tags.status_code == 200
    assert "llama3.2:latest" in {m["name"] for m in tags.json()["models"]}
    assert anonymous.status_code == 401
    assert "emulator" in demo.output
    assert f"curl -N {demo.url}/llm/api/chat -H 'Authorization: Bearer {DEMO_API_KEY}'" in demo.output
    assert f'ollama.Client(host="{demo.url}/llm"' in demo.output
    assert f'base_url="{demo.url}/llm/v1"' in demo.output
    assert "demo / demo-password" in demo.output
    assert code == 0, demo.output


def test_demo_command_uses_the_ollama_that_answers_at_ollama_host(emulator_server: EmulatorServer) -> None:
    with Demo(ollama_host=emulator_server.url) as demo:
        tags = httpx.get(f"{demo.url}/llm/api/tags", headers=KEY, timeout=10)
        code = demo.stop()

    assert tags.status_code == 200
    assert f"Ollama at {emulator_server.url}" in demo.output
    assert "emulator" not in demo.output
    assert code == 0, demo.output
