"""Start and stop a real ``ollama serve`` for tests and benchmarks, with models made on the spot.

The emulator in this package answers as Ollama does for what the gateway relies on, but only the
real server can say what Ollama does: this runs the binary named by ``OLLAMA_BIN`` (or ``ollama`` on
``PATH``) on a free loopback port, with a state directory of its own (models store, key pair, log),
never calling out (``OLLAMA_NO_CLOUD=1``), and creates the synthetic models of
:mod:`ollama_asgi.testing.gguf_models` in it.

Every server is started in a process group of its own and ends with its runners when stopped; it
is also killed if the process that started it dies first, so a test killed on timeout leaves
nothing running.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType

import orjson

from ollama_asgi.testing.gguf_models import FIXTURES, ModelSpec, write_model

__all__ = ["RealOllama", "die_with_parent", "find_ollama_binary"]

_PR_SET_PDEATHSIG = 1
# One line per model load in the server's log: the runner started for a model file.
_LOAD_LINE = re.compile(r'msg="starting runner".*--model ')


def find_ollama_binary() -> str | None:
    """``OLLAMA_BIN`` when set (an error if it names nothing runnable), else ``ollama`` on ``PATH``."""
    named = os.environ.get("OLLAMA_BIN", "").strip()
    if named:
        path = Path(named).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise FileNotFoundError(f"OLLAMA_BIN={named} is not an executable file")
        return str(path.resolve())
    return shutil.which("ollama")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """``preexec_fn`` for a child that must not outlive its parent (Linux; elsewhere it does nothing).

    The signal comes when the thread that started the child ends: start such children from the
    main thread.
    """
    _signal_when_parent_dies(signal.SIGKILL)


def _term_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    _signal_when_parent_dies(signal.SIGTERM)


def _signal_when_parent_dies(signum: int) -> None:  # pragma: no cover - runs in the child
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signum)


# ``ollama serve`` starts a runner process per loaded model, and a runner outlives a server that is
# killed outright. The server therefore runs under a shell that leads their process group: told
# that its parent died (or asked to stop), the shell kills the whole group, runners included.
_GROUP_LEADER = 'trap "kill -KILL 0" TERM INT; "$0" serve & wait $!'


class RealOllama:
    """One ``ollama serve`` on 127.0.0.1, its state under ``state_dir`` (a temporary one by default).

    ``env`` adds ``OLLAMA_*`` settings (``OLLAMA_NUM_PARALLEL``, ``OLLAMA_MAX_QUEUE``, ...); the
    caller's own ``OLLAMA_*`` variables are not passed on, so a developer's settings never change
    what a test sees. ``models_dir`` may be shared by several servers: models are created once.
    """

    def __init__(
        self,
        binary: str | None = None,
        *,
        env: Mapping[str, str] | None = None,
        models_dir: Path | None = None,
        fixtures_dir: Path | None = None,
        gpu: bool = False,
    ) -> None:
        found = binary or find_ollama_binary()
        if found is None:
            raise FileNotFoundError("no Ollama binary: set OLLAMA_BIN or put ollama on PATH")
        self.binary = found
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._own_state = Path(tempfile.mkdtemp(prefix="ollama-real-"))
        self.models_dir = models_dir or self._own_state / "models"
        self.fixtures_dir = fixtures_dir or self._own_state / "fixtures"
        self.log_path = self._own_state / "ollama.log"
        self.extra_env = dict(env or {})
        self.gpu = gpu
        self.process: subprocess.Popen[bytes] | None = None

    # -- process ----------------------------------------------------------------------------------

    def _environment(self) -> dict[str, str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_")}
        home = self._own_state / "home"
        home.mkdir(exist_ok=True)
        environ.update(
            OLLAMA_HOST=f"127.0.0.1:{self.port}",
            OLLAMA_MODELS=str(self.models_dir),
            OLLAMA_NO_CLOUD="1",
            HOME=str(home),
        )
        if not self.gpu:
            environ.update(CUDA_VISIBLE_DEVICES="", HIP_VISIBLE_DEVICES="", ROCR_VISIBLE_DEVICES="")
        environ.update(self.extra_env)
        return environ

    def start(self, timeout: float = 60.0) -> RealOllama:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                ["/bin/sh", "-c", _GROUP_LEADER, self.binary],
                env=self._environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its runners share its group, so one signal ends them all
                preexec_fn=_term_with_parent,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ollama serve exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                self.version()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"ollama serve did not answer within {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """End the server and its runners (their group is killed) and remove the server's state."""
        process, self.process = self.process, None
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # runners that outlived the server
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
        shutil.rmtree(self._own_state, ignore_errors=True)

    def __enter__(self) -> RealOllama:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # -- HTTP ---------------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: object = None, timeout: float = 60.0) -> tuple[int, object]:
        """One exchange with the server directly; returns the status and the decoded JSON body."""
        data = None if body is None else orjson.dumps(body)
        req = urllib.request.Request(self.url + path, data=data, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        return status, orjson.loads(raw) if raw.strip() else None

    def version(self) -> str:
        status, body = self.request("GET", "/api/version", timeout=2)
        if status != 200 or not isinstance(body, dict):
            raise OSError(f"/api/version answered {status}")
        return str(body["version"])

    def loaded(self) -> list[str]:
        """Names of the models in memory now (``/api/ps``)."""
        _, body = self.request("GET", "/api/ps")
        assert isinstance(body, dict)
        return [m["name"] for m in body.get("models") or []]

    # -- models ------------------------------------------------------------------------------------

    def create(self, specs: Iterable[str | ModelSpec]) -> None:
        """Create each model (a fixture name or a spec) unless the models store already has it."""
        _, tags = self.request("GET", "/api/tags")
        have = {m["name"] for m in (tags or {}).get("models") or []} if isinstance(tags, dict) else set()
        for item in specs:
            spec = FIXTURES[item] if isinstance(item, str) else item
            if f"{spec.name}:latest" in have:
                continue
            modelfile = write_model(spec, self.fixtures_dir)
            done = subprocess.run(
                [self.binary, "create", spec.name, "-f", str(modelfile)],
                env=self._environment(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=300,
                check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(f"ollama create {spec.name} failed: {done.stderr.decode(errors='replace')[-2000:]}")

    # -- the server's log --------------------------------------------------------------------------

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def runner_pids(self) -> list[int]:
        """The server's runner processes (one per loaded model): members of its process group that run ``runner``."""
        if self.process is None:
            return []
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                group = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2])
                command = (entry / "cmdline").read_bytes().split(b"\0")
            except (OSError, IndexError, ValueError):
                continue
            if group == self.process.pid and b"runner" in command[1:2]:
                found.append(int(entry.name))
        return found

    def loads(self) -> int:
        """Model loads so far: one ``starting runner ... --model`` line each in the server's log."""
        return len(_LOAD_LINE.findall(self.log()))
