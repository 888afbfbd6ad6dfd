"""`ollama-asgi doctor` checks a setup and says, by its exit code, whether the gateway can serve."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ollama_asgi.cli import main
from ollama_asgi.testing import EmulatorServer
from ollama_asgi.testing.wire import EMULATED_VERSION
from tests.support.processes import free_port
from tests.support.redis_server import RedisServer


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OLLAMA_ASGI_") or name in ("OLLAMA_HOST", "PROMETHEUS_MULTIPROC_DIR"):
            monkeypatch.delenv(name)


def doctor(capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, tuple[str, str]]]:
    """Exit code and the table as {check: (result, detail)}, read by the table's own columns."""
    code = main(["doctor", "--timeout", "2"])
    header, *rows = capsys.readouterr().out.split("\n\n")[0].splitlines()
    assert header.split() == ["CHECK", "RESULT", "DETAIL"]
    result_at, detail_at = header.index("RESULT"), header.index("DETAIL")
    return code, {row[:result_at].strip(): (row[result_at:detail_at].strip(), row[detail_at:]) for row in rows}


def test_a_healthy_setup_passes(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OLLAMA_ASGI_UPSTREAMS", emulator.url)
    monkeypatch.setenv("OLLAMA_ASGI_API_KEYS", "ci=test-api-key-1")
    code, table = doctor(capsys)
    assert code == 0, table
    assert table["settings"][0] == "ok" and "1 upstream(s)" in table["settings"][1]
    result, detail = table["upstream backend-0"]
    assert result == "ok" and f"Ollama {EMULATED_VERSION}" in detail and "6 model(s): all-minilm:latest" in detail
    assert table["gpu (nvml)"][0] in ("ok", "warn")  # no GPU here is worth a warning, not a failure
    assert table["metrics"][0] == "ok"


def test_a_dead_upstream_fails(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OLLAMA_ASGI_UPSTREAMS", f"{emulator.url},http://127.0.0.1:{free_port()}")
    code, table = doctor(capsys)
    assert code == 1
    assert table["upstream backend-0"][0] == "ok"
    result, detail = table["upstream backend-1"]
    assert result == "FAIL" and "cannot connect" in detail


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("OLLAMA_ASGI_PARALEL", "2", "did you mean 'OLLAMA_ASGI_PARALLEL'"),
        ("OLLAMA_ASGI_PARALLEL", "zero", "expected an integer"),
        ("OLLAMA_ASGI_METRICS_ACCESS", "everyone", "must be one of admin, public, off"),
    ],
)
def test_a_bad_setting_fails_and_names_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    code, table = doctor(capsys)
    assert code == 1
    result, detail = table["settings"]
    assert result == "FAIL" and message in detail


def test_redis_is_checked_when_configured_and_fails_when_down(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    redis = RedisServer().start()
    try:
        monkeypatch.setenv("OLLAMA_ASGI_UPSTREAMS", emulator.url)
        monkeypatch.setenv("OLLAMA_ASGI_REDIS_URL", redis.url)
        code, table = doctor(capsys)
        assert code == 0 and table["redis"][0] == "ok" and "Redis " in table["redis"][1]
        redis.kill()
        code, table = doctor(capsys)
        assert code == 1 and table["redis"][0] == "FAIL"
    finally:
        redis.stop()


def test_redis_passwords_stay_out_of_the_output(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OLLAMA_ASGI_UPSTREAMS", emulator.url)
    monkeypatch.setenv("OLLAMA_ASGI_REDIS_URL", f"redis://user:hunter2@127.0.0.1:{free_port()}/0")
    code, table = doctor(capsys)
    assert code == 1 and "hunter2" not in table["redis"][1] and "***@127.0.0.1" in table["redis"][1]


def test_risky_but_valid_settings_are_warnings(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OLLAMA_ASGI_UPSTREAMS", emulator.url)
    monkeypatch.setenv("OLLAMA_ASGI_AUTH", "none")
    code, table = doctor(capsys)
    assert code == 0 and table["auth"][0] == "warn"


def test_the_installed_command_exits_non_zero_on_failure(emulator: EmulatorServer) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_ASGI_")}
    env["OLLAMA_ASGI_UPSTREAMS"] = emulator.url
    ok = subprocess.run([sys.executable, "-m", "ollama_asgi.cli", "doctor"], env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("CHECK") and "all required checks passed" in ok.stdout
    env["OLLAMA_ASGI_UPSTREAMS"] = f"http://127.0.0.1:{free_port()}"
    bad = subprocess.run([sys.executable, "-m", "ollama_asgi.cli", "doctor"], env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "1 failed" in bad.stdout


def _gpus() -> int:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    finally:
        pynvml.nvmlShutdown()


@pytest.mark.gpu
@pytest.mark.skipif(_gpus() == 0, reason="needs an NVIDIA GPU, its driver and nvidia-ml-py")
def test_the_gpus_are_listed_with_their_memory(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OLLAMA_ASGI_UPSTREAMS", emulator.url)
    code, table = doctor(capsys)
    result, detail = table["gpu (nvml)"]
    assert code == 0 and result == "ok" and "driver " in detail and "GiB used" in detail
