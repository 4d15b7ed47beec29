"""The package's import graph (issue 18): no circles, no import up the layers.

Rules, checked on the source (AST, tests/test_imports.py's walker), not by importing it:
- algo/, data/, envs/ never import ray or wsrl_dist.runtime: tests/test_imports.py
  (test_layer_never_imports_ray_or_the_runtime) holds that rule; it is not repeated here.
- config.py (and the section dataclasses it composes) import no wsrl_dist.runtime module: the
  config sits below the runtime that reads it.
- The library side (everything but runtime/, bench/ and the entry points cli.py and study.py)
  imports no wsrl_dist.runtime module: the runtime is built on it, not the other way round. One
  stated exception: errors.py's project_errors() lists every layer's error classes (the wire's
  WireError among them) for the CLI's one-line messages, inside a function.
- No two wsrl_dist modules import each other, directly or through a longer chain.

How an import becomes an edge of the graph: every import statement counts, at module level and
inside functions alike (a function-level import is a dependency all the same; it only defers when
it runs, so deferring one is no way out of a circle). `from pkg import name` points at
`pkg.name` when that is a module, else at `pkg`. Only the module named is an edge, not the parent
packages that Python initialises on the way (`import a.b.c` runs a/__init__.py, but an __init__
that imports its own submodules is the usual shape of a package, not a circle). Type-only imports
under `if TYPE_CHECKING:` count too (none exist).
"""

from __future__ import annotations

from pathlib import Path

from tests.test_imports import PKG, _module_name, imported_modules


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def import_graph(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module -> {imported wsrl_dist module: line of the first such import}."""
    graph: dict[str, dict[str, int]] = {}
    for mod, path in modules.items():
        edges: dict[str, int] = {}
        for line, name in imported_modules(path, mod):
            while name and name not in modules:  # `from pkg import function` -> pkg
                name = name.rpartition(".")[0]
            if name and name != mod and name != "wsrl_dist":
                edges.setdefault(name, line)
        graph[mod] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), each as a closed path
    through it (a -> b -> ... -> a) found by a breadth-first walk, so the message shows the chain."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_closed_path(graph, comp) for comp in comps]


def _closed_path(graph: dict[str, dict[str, int]], comp: list[str]) -> list[str]:
    """A shortest cycle through comp[0] inside the component."""
    start, inside = comp[0], set(comp)
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in graph[v]:
                if w not in inside:
                    continue
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")  # a component of >1 always has one


def _describe(graph: dict[str, dict[str, int]], path: list[str]) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(path, path[1:])) + f" -> {path[-1]}"


def test_cycle_walk_finds_direct_and_longer_circles():
    # the checker itself, on a made-up graph: a 2-cycle, a 3-cycle, and an acyclic tail
    graph = {"a": {"b": 1}, "b": {"a": 2}, "c": {"d": 3}, "d": {"e": 4}, "e": {"c": 5, "f": 6}, "f": {}}
    found = {tuple(p) for p in cycles(graph)}
    assert found == {("a", "b", "a"), ("c", "d", "e", "c")}
    assert cycles({"a": {"b": 1}, "b": {}}) == []


def test_function_level_imports_are_edges(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from wsrl_dist import job\n    from wsrl_dist.runtime.orchestration import driver\n")
    mods = {"wsrl_dist.probe": probe, "wsrl_dist.job": probe, "wsrl_dist.runtime.orchestration.driver": probe}
    assert import_graph(mods)["wsrl_dist.probe"] == {"wsrl_dist.job": 2, "wsrl_dist.runtime.orchestration.driver": 3}


def test_no_two_modules_import_each_other_directly_or_through_a_chain():
    graph = import_graph(_modules())
    assert len(graph) > 50 and sum(map(len, graph.values())) > 100  # the walk saw the real package
    found = cycles(graph)
    assert not found, "import circles:\n" + "\n".join(_describe(graph, p) for p in found)


def test_config_imports_no_runtime_module():
    """config.py and every module it imports (the section dataclasses) stay below the runtime."""
    graph, seen, todo = import_graph(_modules()), set(), ["wsrl_dist.config"]
    while todo:
        mod = todo.pop()
        if mod not in seen:
            seen.add(mod)
            todo += graph[mod]
    bad = sorted(m for m in seen if m == "wsrl_dist.runtime" or m.startswith("wsrl_dist.runtime."))
    assert not bad, f"wsrl_dist.config reaches runtime modules: {bad}"


ABOVE_THE_RUNTIME = ("wsrl_dist.runtime", "wsrl_dist.bench", "wsrl_dist.cli", "wsrl_dist.study")
UPWARD_EXCEPTIONS = {("wsrl_dist.errors", "wsrl_dist.runtime.datapath.wire")}  # the docstring says why


def test_the_library_side_imports_no_runtime_module():
    graph = import_graph(_modules())
    below = [m for m in graph if not any(m == a or m.startswith(a + ".") for a in ABOVE_THE_RUNTIME)]
    assert "wsrl_dist.local" in below and "wsrl_dist.job" in below and "wsrl_dist.plan" in below
    bad = [f"{m} (line {line}) imports {t}" for m in below for t, line in graph[m].items()
           if (t == "wsrl_dist.runtime" or t.startswith("wsrl_dist.runtime.")) and (m, t) not in UPWARD_EXCEPTIONS]
    assert not bad, "\n".join(bad)


MAX_MODULE_LINES = 420  # issue 18: modules <= ~400 lines, split along real seams past that


def test_every_module_is_at_most_max_module_lines_long():
    sizes = {_module_name(p): len(p.read_text().splitlines()) for p in _modules().values()}
    assert len(sizes) > 50 and max(sizes.values()) > 100  # the walk saw the real package
    long = sorted((n, m) for m, n in sizes.items() if n > MAX_MODULE_LINES)
    assert not long, (f"modules over {MAX_MODULE_LINES} lines (split them along a seam, issue 18): "
                      + ", ".join(f"{m} ({n})" for n, m in reversed(long)))
