"""Targets that are not Python code of ours: nginx (Debian's package) and the LiteLLM proxy.

Both are optional. Each ``prepare_*`` returns a started ``Server`` or a reason it was not measured;
neither ever makes up a figure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.procs import ROOT, Server, free_port

# Pinned exactly: some LiteLLM releases were withdrawn as malicious, so the version never floats.
LITELLM_VERSION = "1.106.2"
LITELLM_KEY = "sk-bench-0123456789"
LITELLM_VENV = ROOT / "bench" / ".venv-litellm"
LITELLM_INSTALL_SECONDS = 420


def _apt_install(package: str, log: Path) -> str | None:
    """Install a Debian package when possible; the reason when not."""
    if shutil.which("apt-get") is None:
        return "apt-get is not available"
    if os.geteuid() != 0:
        return f"{package} is not installed and installing it needs root"
    with open(log, "ab") as out:
        try:
            policy = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True, timeout=60)
            if "Candidate: (none)" in policy.stdout or not policy.stdout.strip():
                subprocess.run(["apt-get", "update"], stdout=out, stderr=out, timeout=240, check=False)
            done = subprocess.run(
                ["apt-get", "install", "-y", "--no-install-recommends", package],
                stdout=out,
                stderr=out,
                timeout=240,
                check=False,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            )
        except subprocess.TimeoutExpired:
            return f"apt-get install {package} timed out"
    if done.returncode != 0:
        return f"apt-get install {package} failed (exit {done.returncode}; see {log.name})"
    return None


def ensure_tool(binary: str, package: str, log: Path) -> str | None:
    """None when ``binary`` is on PATH (installing Debian's ``package`` if needed), else why not."""
    if shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin"):
        return None
    reason = _apt_install(package, log)
    if reason is None and not (shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin")):
        return f"{package} installed but {binary} is not on PATH"
    return reason


# ------------------------------------------------------------------------------------------------ nginx

_NGINX_CONF = """
worker_processes 1;
pid {prefix}/nginx.pid;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream emulator {{
        server 127.0.0.1:{upstream_port};
        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://emulator;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host 127.0.0.1:{upstream_port};
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
"""


def nginx_version() -> str:
    binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if binary is None:
        return ""
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    return out.stderr.strip().split("/")[-1]


def prepare_nginx(upstream_port: int, workdir: Path) -> Server | str:
    reason = ensure_tool("nginx", "nginx", workdir / "apt.log")
    if reason is not None:
        return reason
    binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    assert binary is not None
    prefix = workdir / "nginx"
    prefix.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(_NGINX_CONF.format(prefix=prefix, upstream_port=upstream_port, port=port))
    args = [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log"), "-g", "daemon off;"]
    server = Server("nginx", args, port, probe="/api/version", log=prefix / "stdout.log")
    try:
        return server.start(timeout=15)
    except RuntimeError as exc:
        return f"nginx did not start: {exc}"


# ---------------------------------------------------------------------------------------------- LiteLLM

_LITELLM_CONFIG = """
model_list:
  - model_name: {model}
    litellm_params:
      model: ollama_chat/{model}
      api_base: {upstream}
general_settings:
  master_key: {key}
litellm_settings:
  telemetry: false
"""


def _litellm_installed() -> bool:
    python = LITELLM_VENV / "bin" / "python"
    if not python.exists():
        return False
    out = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() == LITELLM_VERSION


def install_litellm(log: Path, within: float = LITELLM_INSTALL_SECONDS) -> str | None:
    """Install ``litellm[proxy]==LITELLM_VERSION`` into its own venv from PyPI; None or why it failed."""
    if _litellm_installed():
        return None
    started = time.monotonic()
    with open(log, "ab") as out:
        try:
            if not (LITELLM_VENV / "bin" / "python").exists():
                subprocess.run(
                    [sys.executable, "-m", "venv", str(LITELLM_VENV)], stdout=out, stderr=out, check=True, timeout=120
                )
            left = max(30.0, within - (time.monotonic() - started))
            done = subprocess.run(
                [
                    str(LITELLM_VENV / "bin" / "python"),
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--disable-pip-version-check",
                    f"litellm[proxy]=={LITELLM_VERSION}",
                ],
                stdout=out,
                stderr=out,
                timeout=left,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return f"installing litellm[proxy]=={LITELLM_VERSION} took longer than {within:g}s"
        except subprocess.CalledProcessError as exc:
            return f"could not create the LiteLLM venv (exit {exc.returncode})"
    if done.returncode != 0:
        return f"pip install litellm[proxy]=={LITELLM_VERSION} failed (exit {done.returncode}; see {log.name})"
    if not _litellm_installed():
        return f"litellm {LITELLM_VERSION} is not importable after installing"
    return None


def prepare_litellm(upstream: str, model: str, workdir: Path) -> Server | str:
    reason = install_litellm(workdir / "litellm-install.log")
    if reason is not None:
        return reason
    config = workdir / "litellm.yaml"
    config.write_text(_LITELLM_CONFIG.format(model=model, upstream=upstream, key=LITELLM_KEY))
    port = free_port()
    args = [
        str(LITELLM_VENV / "bin" / "litellm"),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False"}
    server = Server(
        "litellm", args, port, probe="/health/liveliness", env=env, cwd=workdir, log=workdir / "litellm.log"
    )
    try:
        return server.start(timeout=120)
    except RuntimeError as exc:
        return f"LiteLLM did not start: {exc}"
