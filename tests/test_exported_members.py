"""The public surface is what we promise: the package's names, its integrations' and the emulator's,
and an ``__all__`` in every public module naming only what the module binds."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import ollama_asgi

PACKAGE = Path(ollama_asgi.__file__).resolve().parent

PROMISED = {
    "ollama_asgi": [
        "ApiKey",
        "Authorizer",
        "ConfigError",
        "GatewayError",
        "OllamaGateway",
        "PrefixDispatcher",
        "Principal",
        "Settings",
        "__version__",
    ],
    "ollama_asgi.settings": ["ApiKey", "BackendSpec", "Settings"],  # the README builds backends from here
    "ollama_asgi.testing": [
        "DEFAULT_MODELS",
        "EmulatedModel",
        "EmulatorServer",
        "EmulatorStats",
        "Fault",
        "LoadedModelInfo",
        "OllamaEmulator",
        "RecordedRequest",
    ],
    "ollama_asgi.contrib.starlette": [
        "CSRFMiddleware",
        "UserAuthorizer",
        "UserToPrincipal",
        "default_user_to_principal",
    ],
    "ollama_asgi.contrib.litestar": ["OllamaGatewayPlugin", "to_spec_scope"],
}


@pytest.mark.parametrize("module", sorted(PROMISED))
def test_public_names_are_what_we_promise(module: str) -> None:
    imported = importlib.import_module(module)
    assert imported.__all__ == PROMISED[module]
    for name in PROMISED[module]:
        assert hasattr(imported, name), name


def test_a_star_import_gives_exactly_the_public_names() -> None:
    namespace: dict[str, object] = {}
    exec("from ollama_asgi import *", namespace)
    assert sorted(name for name in namespace if name != "__builtins__") == sorted(PROMISED["ollama_asgi"])


def _public_modules() -> list[Path]:
    """Every module not private by name, leaving out empty ones (package markers)."""
    return sorted(
        path
        for path in PACKAGE.rglob("*.py")
        if not any(part.startswith("_") and part != "__init__.py" for part in path.relative_to(PACKAGE).parts)
        and ast.parse(path.read_text()).body
    )


def _bound_names(body: list[ast.stmt]) -> set[str]:
    """Names a module binds at its top level, in branches and ``try`` blocks too."""
    names: set[str] = set()
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {target.id for target in node.targets if isinstance(target, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, ast.If | ast.Try):
            names |= _bound_names(node.body) | _bound_names(node.orelse)
            for handler in getattr(node, "handlers", []):
                names |= _bound_names(handler.body)
    return names


def _declared(tree: ast.Module) -> list[str] | None:
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if any(isinstance(target, ast.Name) and target.id == "__all__" for target in targets):
            return list(ast.literal_eval(value))
    return None


@pytest.mark.parametrize("path", _public_modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_every_public_module_declares_what_it_exports(path: Path) -> None:
    tree = ast.parse(path.read_text())
    declared = _declared(tree)
    assert declared is not None, "no __all__"
    assert len(declared) == len(set(declared))
    missing = set(declared) - _bound_names(tree.body)
    assert not missing, f"__all__ names what the module does not bind: {sorted(missing)}"


def test_core_import_pulls_in_no_host_framework() -> None:
    code = (
        "import sys, ollama_asgi, ollama_asgi.gateway, ollama_asgi.testing;"
        "bad = [m for m in ('django', 'starlette', 'litestar') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
