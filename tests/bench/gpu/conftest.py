"""GPU-marked tests run only where an NVIDIA GPU is visible; elsewhere they are deselected, saying why.

``make test`` on a CPU host (and CI) therefore never fails because of them; bench/gpu/run.sh runs them
on the GPU machine with ``-m gpu``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util

import pytest

_DESELECTED = pytest.StashKey[int]()


@functools.cache
def cuda_missing() -> str | None:
    """Why GPU tests cannot run here, or None when NVML or PyTorch sees an NVIDIA GPU."""
    try:
        pynvml = importlib.import_module("pynvml")
        pynvml.nvmlInit()
        try:
            if int(pynvml.nvmlDeviceGetCount()) > 0:
                return None
        finally:
            pynvml.nvmlShutdown()
        nvml = "NVML sees no GPU"
    except Exception as exc:  # not installed, no driver, no device
        nvml = f"NVML unavailable ({type(exc).__name__})"
    if importlib.util.find_spec("torch") is None:
        return f"{nvml}; PyTorch is not installed"
    try:
        torch = importlib.import_module("torch")
        if torch.cuda.is_available():
            return None
        return f"{nvml}; PyTorch {torch.__version__} sees no CUDA device"
    except Exception as exc:  # a broken install is as good as none here
        return f"{nvml}; PyTorch cannot be used: {exc}"


def pytest_report_header(config: pytest.Config) -> str:
    reason = cuda_missing()
    return "gpu tests: a GPU is visible, they run" if reason is None else f"gpu tests: deselected ({reason})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = cuda_missing()
    if reason is None:
        return
    gpu = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if item.get_closest_marker("gpu") is None]
        config.stash[_DESELECTED] = len(gpu)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    count = config.stash.get(_DESELECTED, 0)
    if count:
        terminalreporter.write_line(f"{count} gpu test(s) deselected: {cuda_missing()} (they run on a GPU host)")
