"""The Django and Litestar examples run for real, as ``make demo APP=...`` starts them.

Each is started with ``python -m examples.<app>`` in a fresh process, with no Ollama reachable
(so it falls back to the built-in emulator) and, for Django, an empty data directory (so it
migrates and creates its users on start). A browser-like client signs in through the login
form, opens the chat page, and the official ollama client streams a chat with that session.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from tests.support.processes import free_port

REPO = Path(__file__).resolve().parents[2]
LOGIN = {"django": "/login/", "litestar": "/login"}
CSRF_FIELD = {"django": "csrfmiddlewaretoken", "litestar": "_csrf_token"}


@pytest.fixture(params=["django", "litestar"])
def example(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "DJANGO_", "TEST_DJANGO"))}
    env.update(PORT=str(port), OLLAMA_HOST=f"127.0.0.1:{free_port()}", DJANGO_DEMO_DATA=str(tmp_path))
    process = subprocess.Popen(
        [sys.executable, "-m", f"examples.{request.param}_app"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(process, base + LOGIN[request.param])
        yield request.param, base
    finally:
        process.terminate()
        output = process.communicate(timeout=10)[0].decode()
    assert "Traceback" not in output, output


def _wait_until_serving(process: subprocess.Popen[bytes], url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(process.communicate()[0].decode())
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout}s")


def test_the_example_signs_in_and_streams_a_chat_through_llm(example: tuple[str, str]) -> None:
    app, base = example
    with httpx.Client(base_url=base, follow_redirects=True) as browser:
        form = browser.get(LOGIN[app]).text
        token = re.search(rf'name="{CSRF_FIELD[app]}" value="([^"]+)"', form)
        assert token is not None
        fields = {"username": "demo", "password": "demo-password", CSRF_FIELD[app]: token.group(1)}
        page = browser.post(LOGIN[app], data=fields)
        assert page.status_code == 200 and 'data-api="/llm"' in page.text
        cookies = httpx.Cookies(browser.cookies)
    client = ollama.Client(host=base + "/llm", cookies=cookies, headers={"X-CSRFToken": cookies["csrftoken"]})
    chunks = list(client.chat(model="llama3.2", messages=[{"role": "user", "content": "hello world"}], stream=True))
    assert "".join(c.message.content or "" for c in chunks).startswith("hello world")
    with pytest.raises(ollama.ResponseError) as info:
        ollama.Client(host=base + "/llm").list()
    assert info.value.status_code == 401
