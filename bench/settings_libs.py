"""Which library Settings is built on, measured: ``python -m bench.settings_libs [--baseline REF]``.

The candidates are msgspec, pydantic-settings (and pydantic's TypeAdapter, the same validator
without the settings layer) and attrs with cattrs. Each is installed into one fresh virtual
environment (``pip install``; ``--venv DIR`` reuses one), and each converts the same input: every
field of a full ``Settings`` as a loader hands it over (numbers and booleans as text, lists for
tuples, mappings for backends and API keys) into plain frozen dataclasses shaped like ``Settings``,
``BackendSpec`` and ``ApiKey`` (generated from them, bounds left out). The results must be equal.

Per candidate, over ``--runs`` fresh interpreters (medians):

- ``import``: the ``import`` statement of the candidate's top module in a fresh interpreter, and
  ``import in the core``: the same after ``import aiohttp, orjson`` (the core's other dependencies,
  which the gateway imports anyway, along with stdlib modules some candidates pull in);
- ``first``: building the converter (or model) and converting once, what every process pays;
- ``again``: one more conversion, once everything is built (median of 200 in each process);
- ``installed``: the bytes of the files the candidate and what it requires installed (their RECORDs),
  and how many distributions that is; ``added``: the same less what the core's other dependencies
  (aiohttp, orjson) install already.

With ``--baseline REF``, this project's own ``Settings`` as it is at ``REF`` and as it is now, in
this interpreter: ``Settings()``, ``Settings.from_env`` of a dozen variables, and reading
``settings.parallel`` (what the request path does).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import types
import venv
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

ROOT = Path(__file__).resolve().parent.parent
CORE = ("aiohttp", "orjson")  # the core's other dependencies
CANDIDATES = {  # name: (distribution, top module)
    "msgspec": ("msgspec", "msgspec"),
    "pydantic-settings": ("pydantic-settings", "pydantic_settings"),
    "pydantic TypeAdapter": ("pydantic", "pydantic"),
    "attrs + cattrs": ("cattrs", "cattrs"),
}


def _converter(name: str, shape: Any) -> Callable[[dict[str, object]], object]:
    """How each candidate is used: built once, then called with the loader's mapping."""
    if name == "msgspec":
        import msgspec

        return lambda data: msgspec.convert(data, shape.Shape, strict=False)
    if name == "pydantic-settings":
        import pydantic
        import pydantic_settings

        fields = {f.name: (f.type, f.default) for f in dataclasses.fields(shape.Shape)}
        model = pydantic.create_model("ShapeSettings", __base__=pydantic_settings.BaseSettings, **fields)
        return lambda data: model(**data)
    if name == "pydantic TypeAdapter":
        import pydantic

        return pydantic.TypeAdapter(shape.Shape).validate_python
    import cattrs

    # cattrs reads bool("false") as True and has no rule for int | bool: two hooks, as a real use needs.
    converter = cattrs.Converter()
    converter.register_structure_hook(bool, lambda v, _: v if isinstance(v, bool) else v == "true")
    converter.register_structure_hook(int | bool, lambda v, _: v == "true" if v in ("true", "false") else int(v))
    return lambda data: converter.structure(data, shape.Shape)


def probe(name: str, module: str, shape_dir: str, sample: str, preload: str) -> dict[str, Any]:
    """One fresh interpreter's figures for one candidate (run in the candidates' environment)."""
    warnings.simplefilter("ignore")
    for first in filter(None, preload.split(",")):
        importlib.import_module(first)
    start = time.perf_counter()
    importlib.import_module(module)
    imported = time.perf_counter() - start
    sys.path.insert(0, shape_dir)
    shape = importlib.import_module("shape")
    data = json.loads(Path(sample).read_text())
    start = time.perf_counter()
    convert = _converter(name, shape)
    result = convert(data)
    first = time.perf_counter() - start
    again = min(timeit.repeat(lambda: convert(data), number=200, repeat=3)) / 200
    dump = result.model_dump() if hasattr(result, "model_dump") else dataclasses.asdict(result)
    return {"import": imported, "first": first, "again": again, "result": json.loads(json.dumps(dump, default=list))}


_SIZES = """
import json, sys
from importlib import metadata
from packaging.requirements import Requirement
def closure(name, seen):
    dist = metadata.distribution(name)
    key = dist.metadata["Name"].lower().replace("_", "-")
    if key in seen:
        return
    seen[key] = sum((f.size or 0) for f in dist.files or ())
    for text in dist.requires or ():
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            closure(req.name, seen)
out = {}
for name in sys.argv[1:]:
    seen = {}
    closure(name, seen)
    out[name] = seen
print(json.dumps(out))
"""


def _spell(tp: Any, names: dict[type, str]) -> str:
    """A type as source text, with the settings classes renamed to their plain mirrors."""
    origin, args = get_origin(tp), get_args(tp)
    if tp in names:
        return names[tp]
    if tp is type(None):
        return "None"
    if origin is Literal:
        return f"Literal[{', '.join(map(repr, args))}]"
    if origin is Union or origin is types.UnionType:
        return " | ".join(_spell(arg, names) for arg in args)
    if origin is tuple:
        return "tuple[" + ", ".join("..." if arg is Ellipsis else _spell(arg, names) for arg in args) + "]"
    return str(tp.__name__)


def shape_source() -> str:
    """Plain frozen dataclasses shaped like Settings, BackendSpec and ApiKey (bounds left out)."""
    from ollama_asgi.settings import Settings
    from ollama_asgi.specs import ApiKey, BackendSpec

    names: dict[type, str] = {ApiKey: "Key", BackendSpec: "Backend", Settings: "Shape"}
    lines = ["import dataclasses", "from typing import Literal", ""]
    for cls, name in names.items():
        hints = get_type_hints(cls)
        lines += ["", "@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)", f"class {name}:"]
        for f in dataclasses.fields(cls):
            default = "" if f.default is dataclasses.MISSING else f" = {f.default!r}"
            lines.append(f"    {f.name}: {_spell(hints[f.name], names)}{default}")
    return "\n".join(lines) + "\n"


def _loosen(value: object) -> object:
    """A value as a loader hands it over: scalars as text, tuples as lists, dataclasses as mappings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, tuple):
        return [_loosen(item) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _loosen(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


ENV = {
    "OLLAMA_ASGI_UPSTREAMS": "http://gpu-a:11434,http://gpu-b:11434",
    "OLLAMA_ASGI_AUTH": "api_key",
    "OLLAMA_ASGI_API_KEYS": "ci=ci-secret-key-1,etl=etl-secret-key-2",
    "OLLAMA_ASGI_ADMIN_API_KEYS": "ops=ops-secret-key-3",
    "OLLAMA_ASGI_PARALLEL": "4",
    "OLLAMA_ASGI_MAX_QUEUE": "128",
    "OLLAMA_ASGI_QUEUE_TIMEOUT": "45s",
    "OLLAMA_ASGI_NUM_CTX_BUCKETS": "4096,8192,16384",
    "OLLAMA_ASGI_MODEL_MAX_NUM_CTX": "llama3*=16384",
    "OLLAMA_ASGI_RUNNER_OPTIONS": "num_thread=8,use_mmap=false",
    "OLLAMA_ASGI_VRAM_BUDGET": "24GiB",
    "OLLAMA_ASGI_LIFECYCLE": "true",
}


def sample() -> dict[str, object]:
    """Every field of a full Settings, as a loader hands it to the library."""
    from ollama_asgi.settings import Settings

    settings = Settings.from_env(environ=ENV)
    data = {f.name: _loosen(getattr(settings, f.name)) for f in dataclasses.fields(Settings)}
    return data


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def candidates(python: Path, workdir: Path, runs: int) -> dict[str, dict[str, Any]]:
    (workdir / "shape.py").write_text(shape_source())
    (workdir / "sample.json").write_text(json.dumps(sample()))
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONDONTWRITEBYTECODE": "1"}
    dists = [dist for dist, _ in CANDIDATES.values()]
    sizes = json.loads(
        subprocess.run(
            [str(python), "-c", _SIZES, *dists, *CORE], capture_output=True, text=True, check=True, env=env
        ).stdout
    )
    core = {dist for name in CORE for dist in sizes[name]}
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in CANDIDATES}
    for _ in range(runs):  # candidates take turns, so a busy moment weighs on all of them
        for name, (_dist, module) in CANDIDATES.items():
            args = [str(python), __file__, "--probe", name, module, str(workdir), str(workdir / "sample.json")]
            row: dict[str, Any] = {}
            for preload in ("", ",".join(CORE)):
                done = subprocess.run([*args, preload], capture_output=True, text=True, env=env)
                if done.returncode:
                    raise RuntimeError(f"{name}: {done.stderr.strip()[-2000:]}")
                measured = json.loads(done.stdout)
                row = measured if not preload else {**row, "import_in_core": measured["import"]}
            rows[name].append(row)
    reference = rows["msgspec"][0]["result"]
    out: dict[str, dict[str, Any]] = {}
    for name, (dist, _module) in CANDIDATES.items():
        installed = sizes[dist]
        out[name] = {
            "import_ms": _median(rows[name], "import") * 1e3,
            "import_in_core_ms": _median(rows[name], "import_in_core") * 1e3,
            "first_ms": _median(rows[name], "first") * 1e3,
            "again_us": _median(rows[name], "again") * 1e6,
            "installed_kib": sum(installed.values()) / 1024,
            "added_kib": sum(size for d, size in installed.items() if d not in core) / 1024,
            "distributions": sorted(installed),
            "same_result": rows[name][0]["result"] == reference,
        }
    return out


_OURS = """
import json, sys, time, timeit
from ollama_asgi.settings import Settings
env = json.loads(sys.argv[1])
start = time.perf_counter()
Settings.from_env(environ=env)
first = time.perf_counter() - start
settings = Settings.from_env(environ=env)
def per(stmt, number):
    return min(timeit.repeat(stmt, number=number, repeat=5, globals=globals())) / number
print(json.dumps({
    "first_from_env_us": first * 1e6,
    "settings_us": per("Settings()", 200) * 1e6,
    "from_env_us": per("Settings.from_env(environ=env)", 200) * 1e6,
    "attribute_ns": per("settings.parallel", 1_000_000) * 1e9,
}))
"""


def ours(baseline: str, workdir: Path, runs: int) -> dict[str, dict[str, float]]:
    """This project's Settings at ``baseline`` and now, in this interpreter, taking turns."""
    from bench.run import baseline_copy

    paths = {"baseline": baseline_copy(baseline, workdir), "now": ROOT}
    rows: dict[str, list[dict[str, float]]] = {label: [] for label in paths}
    for _ in range(runs):
        for label, path in paths.items():
            env = {**os.environ, "PYTHONPATH": str(path)}
            done = subprocess.run(
                [sys.executable, "-c", _OURS, json.dumps(ENV)], capture_output=True, text=True, env=env, check=True
            )
            rows[label].append(json.loads(done.stdout))
    return {label: {key: _median(found, key) for key in found[0]} for label, found in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--venv", type=Path, help="a virtual environment to install the candidates into (kept)")
    parser.add_argument("--runs", type=int, default=9, help="fresh interpreters per candidate")
    parser.add_argument("--baseline", help="also measure this project's Settings at this git ref against now")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="settings-libs-") as tmp:
        workdir = Path(tmp)
        env_dir = args.venv or workdir / "venv"
        python = env_dir / "bin" / "python"
        if not python.exists():
            venv.create(env_dir, with_pip=True)
        packages = [dist for dist, _ in CANDIDATES.values()] + [*CORE, "packaging"]
        subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True)
        versions = subprocess.run(
            [str(python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=True
        ).stdout
        report: dict[str, Any] = {
            "python": sys.version.split()[0],
            "versions": {p["name"]: p["version"] for p in json.loads(versions)},
            "candidates": candidates(python, workdir, args.runs),
        }
        if args.baseline:
            report["settings"] = ours(args.baseline, workdir, args.runs)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--probe"]:  # in the candidates' environment, without this project
        print(json.dumps(probe(*sys.argv[2:7])))
    else:
        main()
