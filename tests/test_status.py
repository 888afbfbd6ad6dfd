"""/_gateway/status: JSON for tools, a live page for browsers, administrators only."""

from __future__ import annotations

import asyncio
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from ollama_asgi import OllamaGateway, Principal, Settings
from ollama_asgi.health import BackendWatch
from ollama_asgi.status import prefers_html
from ollama_asgi.testing import EmulatorServer
from ollama_asgi.upstream import Upstream
from tests.conftest import ADMIN, AUTH
from tests.support.hosts import starlette_host
from tests.support.processes import free_port
from tests.support.rawhttp import wait_until
from tests.support.redis_server import RedisServer
from tests.support.server import ServerThread

CHROMIUM = "/usr/bin/chromium"
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


def test_status_reports_backends_loaded_models_and_queues(host_factory: Callable[..., ServerThread]) -> None:
    server = host_factory(parallel=2)
    llm = server.url + "/llm"
    body = {"model": "llama3.2", "prompt": "hi", "stream": False}
    assert httpx.post(llm + "/api/generate", json=body, headers=AUTH).status_code == 200
    wait_until(lambda: httpx.get(llm + "/_gateway/status", headers=ADMIN).json()["queues"][0]["in_flight"] == 0)
    response = httpx.get(llm + "/_gateway/status", headers=ADMIN)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["cache-control"] == "no-store"
    status = response.json()
    assert status["version"] and status["uptime_seconds"] >= 0 and status["started_at"].endswith("Z")
    (backend,) = status["backends"]
    assert backend["name"] == "backend-0" and backend["up"] is True and backend["error"] is None
    assert backend["breaker"] == "closed" and backend["draining"] is False
    (model,) = backend["models"]
    assert model["name"] == "llama3.2:latest" and model["size_vram"] > 0 and model["expires_at"]
    (queue,) = status["queues"]
    assert queue == {
        "backend": "backend-0",
        "model": "llama3.2:latest",
        "pool": "generate",
        "in_flight": 0,
        "waiting": 0,
        "capacity": 2,
        "service_time_seconds": queue["service_time_seconds"],
        "refill_gaps_seconds": [],
    }
    assert queue["service_time_seconds"] > 0
    assert status["max_queue"] == 64 and status["redis"] is None


def test_a_load_by_the_gateway_shows_at_once_although_status_was_read_just_before(
    host_factory: Callable[..., ServerThread],
) -> None:
    llm = host_factory().url + "/llm"
    (backend,) = httpx.get(llm + "/_gateway/status", headers=ADMIN).json()["backends"]
    assert backend["models"] == []  # read now, cached for a second
    body = {"model": "llama3.2", "prompt": "x", "stream": False, "options": {"num_predict": 1}}
    assert httpx.post(llm + "/api/generate", json=body, headers=AUTH).status_code == 200
    (backend,) = httpx.get(llm + "/_gateway/status", headers=ADMIN).json()["backends"]
    assert [m["name"] for m in backend["models"]] == ["llama3.2:latest"]


@pytest.mark.parametrize(("headers", "status"), [({}, 401), (AUTH, 403)])
def test_status_is_for_administrators(llm_url: str, headers: dict[str, str], status: int) -> None:
    for accept in ("application/json", BROWSER_ACCEPT):
        response = httpx.get(llm_url + "/_gateway/status", headers={**headers, "Accept": accept})
        assert response.status_code == status
        assert "restricted" in response.text or "authentication" in response.text


def test_status_shows_a_backend_that_is_down(host_factory: Callable[..., ServerThread]) -> None:
    server = host_factory(upstreams=(f"http://127.0.0.1:{free_port()}",))
    (backend,) = httpx.get(server.url + "/llm/_gateway/status", headers=ADMIN).json()["backends"]
    assert backend["up"] is False and backend["models"] == [] and "connect" in backend["error"]


def test_status_reports_redis_health(host_factory: Callable[..., ServerThread]) -> None:
    redis = RedisServer().start()
    try:
        server = host_factory(redis_url=redis.url)
        assert httpx.get(server.url + "/llm/_gateway/status", headers=ADMIN).json()["redis"] == {
            "up": True,
            "error": None,
        }
    finally:
        redis.stop()


def test_many_status_readers_cost_ollama_one_ps_call_per_second(
    host_factory: Callable[..., ServerThread], emulator: EmulatorServer
) -> None:
    server = host_factory()

    async def read_many() -> None:
        async with httpx.AsyncClient(headers=ADMIN) as client:
            await asyncio.gather(*(client.get(server.url + "/llm/_gateway/status") for _ in range(20)))

    emulator.emulator.clear()
    asyncio.run(read_many())
    assert len([r for r in emulator.emulator.requests if r.path == "/api/ps"]) == 1


async def test_backends_added_and_removed_at_run_time_are_followed(emulator: EmulatorServer) -> None:
    first = Upstream(emulator.url, connect_timeout=1, read_timeout=1, name="backend-0")
    second = Upstream(f"http://127.0.0.1:{free_port()}", connect_timeout=1, read_timeout=1, name="backend-1")
    backends = [first]
    watch = BackendWatch(backends, ttl=0)
    try:
        assert [(s.name, s.up) for s in await watch.refresh()] == [("backend-0", True)]
        backends.append(second)
        assert [(s.name, s.up) for s in await watch.refresh()] == [("backend-0", True), ("backend-1", False)]
        backends.remove(first)
        assert [s.name for s in await watch.refresh()] == ["backend-1"] and set(watch.states) == {"backend-1"}
    finally:
        await first.aclose()
        await second.aclose()


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        (BROWSER_ACCEPT, True),
        ("text/html", True),
        ("application/json", False),
        ("*/*", False),
        ("", False),
        ("application/json, text/html;q=0.5", False),
        ("text/*;q=0.9, application/json;q=0.5", True),
    ],
)
def test_browsers_get_the_page_and_tools_get_json(accept: str, html: bool) -> None:
    assert prefers_html({"headers": [(b"accept", accept.encode())]}) is html


def test_the_page_is_self_contained_and_locked_down(llm_url: str) -> None:
    response = httpx.get(llm_url + "/_gateway/status", headers={**ADMIN, "Accept": BROWSER_ACCEPT})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["vary"].lower().startswith("accept")
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp and "frame-ancestors 'none'" in csp
    page = response.text
    assert "<script>" in page and "<style>" in page
    assert "http://" not in page and "https://" not in page and " src=" not in page  # no external assets


# -- in a real browser ---------------------------------------------------------------------------


def _png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and rows of raw pixels of an 8-bit RGB or RGBA, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, chunk = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = chunk
        elif kind == b"IDAT":
            idat += chunk
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and color in (2, 6) and interlace == 0, (depth, color, interlace)
    bpp = 4 if color == 6 else 3
    raw, stride, rows = zlib.decompress(idat), width * bpp, []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, corner = previous[i], previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        rows.append(bytes(line))
        previous = line
    return width, height, [r[i : i + 3] for r in rows for i in range(0, stride, bpp)]


def _chromium(url: str, profile: str, *extra: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
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
            f"--user-data-dir={profile}",
            "--window-size=1200,800",
            "--virtual-time-budget=3000",
            *extra,
            url,
        ],
        capture_output=True,
        timeout=90,
    )


@pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Chromium is not installed; `make test` installs it")
async def test_the_page_renders_live_numbers_in_chromium(emulator: EmulatorServer, tmp_path: Path) -> None:
    # The host's own sign-in decides who is an operator (here: everyone, as behind an SSO proxy that
    # only lets operators through). The page then polls with the browser's own credentials, exactly
    # as it would with a host session cookie, so the browser needs no key in its URL or headers.
    gateway = OllamaGateway(
        Settings(upstreams=(emulator.url,), parallel=2), authorize=lambda scope: Principal(id="ops", is_admin=True)
    )
    emulator.emulator.token_interval = 0.05
    server = ServerThread(starlette_host(gateway)).start()
    llm = server.url + "/llm"
    body = {"model": "llama3.2", "prompt": "w", "stream": False, "options": {"num_predict": 600}}
    busy: list[asyncio.Future[httpx.Response]] = []
    async with httpx.AsyncClient(base_url=llm, timeout=60) as client:
        try:
            await client.post("/api/embed", json={"model": "nomic-embed-text", "input": "warm up"})
            busy += [asyncio.ensure_future(client.post("/api/generate", json=body)) for _ in range(5)]
            for _ in range(200):  # two generating, three waiting for a slot of llama3.2's runner
                queues = (await client.get("/_gateway/status")).json()["queues"]
                if [(q["in_flight"], q["waiting"]) for q in queues if q["model"] == "llama3.2:latest"] == [(2, 3)]:
                    break
                await asyncio.sleep(0.02)
            url = llm + "/_gateway/status"
            with tempfile.TemporaryDirectory() as profile:
                shot = tmp_path / "status.png"
                done = await asyncio.to_thread(_chromium, url, profile, f"--screenshot={shot}")
                assert shot.exists(), done.stderr.decode()[-2000:]
                dom = (await asyncio.to_thread(_chromium, url, profile, "--dump-dom")).stdout.decode()
        finally:
            for task in busy:
                task.cancel()
            await asyncio.gather(*busy, return_exceptions=True)
            server.stop()

    assert "2 / 2 in flight" in dom and "3 / 64 waiting" in dom, dom[-3000:]
    assert "backend-0 · llama3.2:latest · " in dom and "backend-0 · nomic-embed-text:latest · " in dom  # a row each
    assert "llama3.2:latest" in dom and "nomic-embed-text:latest" in dom and "GiB VRAM" in dom
    assert ">live<" in dom

    width, height, pixels = _png_pixels(shot.read_bytes())
    assert (width, height) == (1200, 800)
    colours: dict[bytes, int] = {}
    for pixel in pixels:
        colours[pixel] = colours.get(pixel, 0) + 1
    assert len(colours) > 50, "the screenshot is (nearly) blank"
    assert max(colours.values()) < 0.9 * len(pixels)
    purple = sum(n for (r, g, b), n in colours.items() if r > 100 and g < 100 and b > 180)
    assert purple > 1000, "no VRAM bar was drawn"
