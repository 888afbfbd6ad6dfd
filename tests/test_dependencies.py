"""Dependencies follow imports: the core installs what the core imports, each extra what its feature imports."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ollama_asgi"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

# Every third-party module the core imports, and where it comes from: None for the core's own
# dependencies, else the extra whose feature imports it (guarded, with an error naming the extra).
CORE_IMPORTS: dict[str, tuple[str, str | None]] = {
    "aiohttp": ("aiohttp", None),
    "msgspec": ("msgspec", None),
    "orjson": ("orjson", None),
    "prometheus_client": ("prometheus-client", "metrics"),
    "pynvml": ("nvidia-ml-py", "nvml"),
    "redis": ("redis", "redis"),
    "tokenizers": ("tokenizers", "tokenizers"),
    "uvicorn": ("uvicorn", "serve"),
}
HOST_FRAMEWORKS = {"django", "litestar", "starlette", "asgiref"}


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower()


def _extra(name: str) -> set[str]:
    """The distributions an extra brings, following ``ollama-asgi[...]`` references."""
    names: set[str] = set()
    for requirement in PROJECT["optional-dependencies"][name]:
        if _name(requirement) == "ollama-asgi":
            for inner in requirement.split("[", 1)[1].rstrip("]").split(","):
                names |= _extra(inner.strip())
        else:
            names.add(_name(requirement))
    return names


def _third_party_imports(path: Path) -> set[str]:
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    return {name for name in imported if name not in sys.stdlib_module_names and name != "ollama_asgi"}


def _core_modules() -> list[Path]:
    return [path for path in PACKAGE.rglob("*.py") if path.relative_to(PACKAGE).parts[0] not in ("contrib", "testing")]


def test_every_third_party_import_of_the_core_has_a_declared_source() -> None:
    imported = set().union(*(_third_party_imports(path) for path in _core_modules()))
    assert imported <= set(CORE_IMPORTS), f"place these in CORE_IMPORTS: {sorted(imported - set(CORE_IMPORTS))}"
    for module in imported:
        distribution, extra = CORE_IMPORTS[module]
        declared = {_name(r) for r in PROJECT["dependencies"]} if extra is None else _extra(extra)
        assert distribution in declared, f"{module} is imported but {distribution} is not in {extra or 'the core'}"


def test_the_core_installs_only_what_it_imports() -> None:
    imported = set().union(*(_third_party_imports(path) for path in _core_modules()))
    core = {
        distribution for module, (distribution, extra) in CORE_IMPORTS.items() if extra is None and module in imported
    }
    assert {_name(r) for r in PROJECT["dependencies"]} == core


@pytest.mark.parametrize("extra", ["starlette", "serve", "metrics", "redis"])
def test_an_extra_brings_no_host_framework_it_does_not_need(extra: str) -> None:
    """A FastAPI or Starlette user installs ``[starlette]`` (or ``[serve]``) and gets no Django or Litestar."""
    assert _extra(extra) & HOST_FRAMEWORKS <= {extra}


def _without_uvicorn(*argv: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; sys.modules['uvicorn'] = None; from ollama_asgi.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("argv", [("serve",), ("emulate", "--port", "0")])
def test_a_server_command_without_uvicorn_names_the_extra_to_install(argv: tuple[str, ...]) -> None:
    result = _without_uvicorn(*argv)
    assert result.returncode == 2
    assert "pip install 'ollama-asgi[serve]'" in result.stderr


def test_the_other_commands_need_no_uvicorn() -> None:
    result = _without_uvicorn("doctor", "--help")
    assert result.returncode == 0, result.stderr
    assert "--timeout" in result.stdout
