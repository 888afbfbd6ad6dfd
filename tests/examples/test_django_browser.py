"""A real browser signs in to the Django example and watches a chat answer stream in.

Headless Chromium (Debian's package, installed by ``make test``) is driven over the DevTools
protocol with the ``websockets`` client that uvicorn already brings; no browser download.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def django_demo(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    env = {**os.environ, "PORT": str(port), "OLLAMA_HOST": f"http://127.0.0.1:{_free_port()}"}
    env["DJANGO_DEMO_DATA"] = str(tmp_path / "data")
    env.pop("DJANGO_SETTINGS_MODULE", None)  # the host suite's embedded project sets it in this process
    process = subprocess.Popen(
        [sys.executable, "-m", "examples.django_app"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/login/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Django demo did not start: {process.stdout.read().decode()}")  # type: ignore[union-attr]
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)


class Page:
    """Just enough of the DevTools protocol to drive one tab."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.next_id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=30))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(message["error"])
                return dict(message.get("result", {}))

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"never true in the page: {expression}")


@pytest.fixture
def page() -> Iterator[Page]:
    profile = tempfile.mkdtemp(prefix="ollama-asgi-chromium-")
    browser = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "--window-size=1100,800",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        active = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not active.exists() or len(active.read_text().splitlines()) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("Chromium did not start")
            time.sleep(0.05)
        port = active.read_text().splitlines()[0]
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list").json()
        tab = next(t for t in targets if t["type"] == "page")
        with connect(tab["webSocketDebuggerUrl"], max_size=None) as ws:
            yield Page(ws)
    finally:
        browser.terminate()
        browser.wait(10)
        shutil.rmtree(profile, ignore_errors=True)


def test_a_signed_in_user_sees_the_answer_stream_into_the_page(django_demo: str, page: Page, tmp_path: Path) -> None:
    page.call("Page.enable")
    page.call("Page.navigate", url=django_demo + "/")
    page.wait_for("location.pathname === '/login/' && !!document.querySelector('input[name=username]')")
    page.js(
        "document.querySelector('input[name=username]').value = 'demo';"
        "document.querySelector('input[name=password]').value = 'demo-password';"
        "document.querySelector('form').submit(); true"
    )
    page.wait_for("location.pathname === '/' && document.getElementById('model').options.length > 0")
    page.js(
        "document.getElementById('model').value = 'llama3.2:latest';"
        "document.getElementById('prompt').value = 'tell me about streaming please';"
        "document.getElementById('ask').requestSubmit(); true"
    )
    lengths = []
    deadline = time.monotonic() + 20
    text = ""
    while time.monotonic() < deadline:
        text = page.js("document.getElementById('log').innerText") or ""
        lengths.append(len(text))
        if "streaming please tell" in text:
            break
        time.sleep(0.02)
    assert "streaming please tell" in text  # the emulator's answer cycles the prompt's words
    # The answer grew in several steps while the page watched: it was streamed, not delivered whole.
    assert len(set(lengths)) >= 4, lengths
    shot = page.call("Page.captureScreenshot", format="png")
    png = base64.b64decode(shot["data"])
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    (tmp_path / "django-chat.png").write_bytes(png)
    if os.environ.get("OLLAMA_ASGI_SCREENSHOTS"):
        (Path(os.environ["OLLAMA_ASGI_SCREENSHOTS"]) / "django-chat.png").write_bytes(png)
