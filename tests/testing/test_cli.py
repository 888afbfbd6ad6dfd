"""The ``emulate`` command's options, and ``python -m ollama_asgi.testing``."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from ollama_asgi.testing.cli import add_emulate_arguments, build_emulator, load_models


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_emulate_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_match_ollama(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OLLAMA_NUM_PARALLEL", "OLLAMA_MAX_QUEUE", "OLLAMA_KEEP_ALIVE", "OLLAMA_CONTEXT_LENGTH"):
        monkeypatch.delenv(name, raising=False)
    args = parse()
    assert (args.host, args.port, args.parallel, args.max_queue) == ("127.0.0.1", 11434, 1, 512)
    assert args.keep_alive == 300.0


def test_environment_variables_set_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_NUM_PARALLEL", ' "4" ')
    monkeypatch.setenv("OLLAMA_MAX_QUEUE", "nonsense")
    monkeypatch.setenv("OLLAMA_KEEP_ALIVE", "-1")
    args = parse()
    assert (args.parallel, args.max_queue, args.keep_alive) == (4, 512, math.inf)


def test_fast_means_instant_loads_and_tokens() -> None:
    emulator = build_emulator(parse("--fast"))
    assert (emulator.token_interval, emulator.load_base_seconds, emulator.load_bytes_per_second) == (0.0, 0.0, math.inf)


def test_flags_reach_the_emulator() -> None:
    emulator = build_emulator(
        parse("--parallel", "3", "--max-queue", "7", "--token-interval", "0.1", "--load-seconds", "2", "--vram-gb", "8")
    )
    assert (emulator.parallel, emulator.max_queue, emulator.token_interval) == (3, 7, 0.1)
    assert (emulator.load_base_seconds, emulator.vram_bytes) == (2.0, 8 * 2**30)


def test_models_as_a_comma_list_of_built_ins() -> None:
    assert [m.name for m in load_models("llama3.2, all-minilm")] == ["llama3.2:latest", "all-minilm:latest"]


def test_models_from_a_json_file(tmp_path: Path) -> None:
    path = tmp_path / "models.json"
    path.write_text(json.dumps([{"name": "custom", "size": 123}]))
    assert [m.name for m in load_models(str(path))] == ["custom:latest"]


def test_unknown_built_in_model_is_an_error() -> None:
    with pytest.raises(SystemExit, match="unknown model"):
        load_models("nope")


def test_module_entry_point_shows_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ollama_asgi.testing", "--help"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0
    assert "--parallel" in result.stdout and "--fast" in result.stdout
