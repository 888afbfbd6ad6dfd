"""Server processes for the benchmark: start, wait until they answer, read their CPU time and memory."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from ollama_asgi.testing.real import die_with_parent

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (nginx workers, LiteLLM's server process)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(_children(current))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of the processes, from /proc (all their threads included)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / _TICKS


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", "rb") as handle:
                total += int(handle.read().split()[1]) * _PAGE
        except OSError:
            continue
    return total


class Server:
    """A server in a child process, stopped with SIGINT (graceful) then SIGKILL."""

    def __init__(
        self,
        name: str,
        args: list[str],
        port: int,
        *,
        probe: str = "/",
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        log: Path | None = None,
    ) -> None:
        self.name = name
        self.args = args
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.probe = probe
        self.env = env
        self.cwd = cwd or ROOT
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_handle: object = None

    def start(self, timeout: float = 60.0) -> Server:
        self.launch()
        return self.wait_ready(timeout)

    def launch(self) -> Server:
        env = {**os.environ, **(self.env or {})}
        out = open(self.log, "ab") if self.log is not None else subprocess.DEVNULL  # noqa: SIM115
        self._log_handle = out
        self.proc = subprocess.Popen(
            self.args,
            cwd=self.cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,  # a harness killed on timeout leaves no server behind
        )
        return self

    def wait_ready(self, timeout: float = 60.0) -> Server:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} while starting")
            try:
                with urllib.request.urlopen(self.url + self.probe, timeout=1) as resp:
                    if resp.status < 500:
                        return self
            except urllib.error.HTTPError as exc:
                if exc.code < 500:
                    return self
                time.sleep(0.05)
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer within {timeout:g}s")

    @property
    def pids(self) -> list[int]:
        assert self.proc is not None
        return tree(self.proc.pid)

    def cpu(self) -> float:
        return cpu_seconds(self.pids)

    def rss(self) -> int:
        return rss_bytes(self.pids)

    def interrupt(self) -> None:
        """Ask the server to stop (SIGINT to its process group) without waiting."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                self.interrupt()
                proc.wait(5)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)
        if hasattr(self._log_handle, "close"):
            self._log_handle.close()
        self.proc = None


def stop_all(servers: list[Server]) -> None:
    """Stop servers together: interrupt all, then wait for each."""
    for server in servers:
        server.interrupt()
    for server in servers:
        server.stop()


def python_server(
    name: str, kind: str, port: int, *extra: str, log: Path | None = None, package_path: str | None = None
) -> Server:
    args = [sys.executable, "-m", "bench.serve", kind, "--port", str(port), *extra]
    if package_path:
        args += ["--package-path", package_path]
    return Server(name, args, port, log=log)


def start_gateway_process(
    env: dict[str, str],
    timeout: float = 30.0,
    *,
    stderr: IO[bytes] | int = subprocess.DEVNULL,
    package_path: str | None = None,
    command: Sequence[str] = (sys.executable, "-m", "ollama_asgi.cli"),
    serve_args: Sequence[str] = (),
) -> tuple[subprocess.Popen[bytes], str]:
    """``ollama-asgi serve`` on a free port with these ``OLLAMA_ASGI_*`` settings (the caller's own are
    dropped); returns the process, which dies with its harness, and the gateway's base URL.

    ``package_path``: import the package from there (an earlier version), run from there too, since
    ``-m`` puts the working directory first on the path. ``command``: what runs ``serve`` (a host
    script, say); ``serve_args``: more of its options.
    """
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_ASGI_")}
    environ.update(env)
    if package_path:
        environ["PYTHONPATH"] = package_path
    cmd = [*command, "serve", "--port", str(port), "--log-level", "warning", *serve_args]
    process = subprocess.Popen(
        cmd, env=environ, stdout=subprocess.DEVNULL, stderr=stderr, cwd=package_path, preexec_fn=die_with_parent
    )
    url = f"http://127.0.0.1:{port}/llm"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(url + "/_gateway/health", timeout=1):
                return process, url
        except urllib.error.HTTPError:  # it answers (503: no backend answers yet)
            return process, url
        except OSError:
            time.sleep(0.05)
    stop_process(process)
    raise RuntimeError("the gateway did not start")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the gateway drains), then SIGKILL after 10 s."""
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
