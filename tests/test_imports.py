"""Import rules (docs/CONVENTIONS.md): algo, data and envs never import ray or wsrl_dist.runtime, algo
imports only torch/numpy/stdlib, and importing the library side of the package never loads ray."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "wsrl_dist"
RAY_FREE_LAYERS = ("algo", "data", "envs")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, module: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file: relative imports resolved (against the
    dotted `module` name, by default the file's place in the package) and importlib.import_module("x") /
    __import__("x") calls with a literal name included."""
    module = module or _module_name(path)
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            out += [(node.lineno, f"{mod}.{a.name}") for a in node.names]  # from pkg import submodule
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
                out.append((node.lineno, str(node.args[0].value)))
    return out


def _layer_files(layer: str) -> list[Path]:
    files = sorted((PKG / layer).rglob("*.py"))
    assert files, f"no python files under wsrl_dist/{layer}"
    return files


def _is_under(mod: str, root: str) -> bool:
    return mod == root or mod.startswith(root + ".")


def test_ast_walk_sees_relative_and_dynamic_imports(tmp_path):
    # the checker itself: a file written to break every rule is caught (guards against a vacuous pass)
    bad = tmp_path / "probe.py"
    bad.write_text("from ..runtime import driver\nimport importlib\nimportlib.import_module('ray')\n"
                   "def f():\n    from ray import util\n")
    mods = {m for _, m in imported_modules(bad, "wsrl_dist.algo.probe")}
    assert {"wsrl_dist.runtime", "wsrl_dist.runtime.driver", "ray", "ray.util"} <= mods


@pytest.mark.parametrize("layer", RAY_FREE_LAYERS)
def test_layer_never_imports_ray_or_the_runtime(layer):
    bad = [f"{path.relative_to(PKG.parent)}:{line} imports {mod}"
           for path in _layer_files(layer) for line, mod in imported_modules(path)
           if _is_under(mod, "ray") or _is_under(mod, "wsrl_dist.runtime")]
    assert not bad, "\n".join(bad)


def test_algo_imports_only_torch_numpy_stdlib_and_itself():
    allowed_roots = {"torch", "numpy", "__future__"} | set(sys.stdlib_module_names)
    bad = []
    for path in _layer_files("algo"):
        for line, mod in imported_modules(path):
            root = mod.split(".")[0]
            if root == "wsrl_dist":
                ok = _is_under(mod, "wsrl_dist.algo")
            else:
                ok = root in allowed_roots
            if not ok:
                bad.append(f"{path.relative_to(PKG.parent)}:{line} imports {mod}")
    assert not bad, "\n".join(bad)


def test_fresh_interpreter_importing_the_library_side_never_loads_ray():
    """algo, data, envs (every module), config, the single-process pipeline and its helpers."""
    modules = ["wsrl_dist", "wsrl_dist.algo", "wsrl_dist.config", "wsrl_dist.job", "wsrl_dist.local",
               "wsrl_dist.pretrain", "wsrl_dist.evaluation"]
    for layer in RAY_FREE_LAYERS:
        modules += sorted({_module_name(p) for p in _layer_files(layer)})
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(k for k in sys.modules if k == 'ray' or k.startswith('ray.'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PKG.parent)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
