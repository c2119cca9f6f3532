"""Print every import cycle among edgekit's modules; exit 1 if there is one.

    python scripts/check_imports.py [--top-level | --types] [--known A:B ...] [--graph]

Every ``import``/``from ... import`` of an edgekit module counts, function-local ones included (a cycle
held together by a deferred import is still a cycle), except those under ``if TYPE_CHECKING:``. Importing
``edgekit.a.b`` also runs ``edgekit/a/__init__.py``, so a module depends on the packages of what it
imports (never on its own package: that one is already running).
``--top-level`` counts only the imports that run when the module is imported; ``--types`` counts the
``TYPE_CHECKING`` ones too (a circle that only type names close, as a type checker sees it). ``--known A:B`` leaves out
the imports from module A of B or anything under B (short names, without ``edgekit.``): a known cycle
that is being broken elsewhere; it is printed, never silently dropped.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def modules(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for p in sorted((root / "edgekit").rglob("*.py")):
        name = ".".join(p.relative_to(root).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.Module, top_level: bool, types: bool = False):
    """(import node) for every import, skipping TYPE_CHECKING blocks (unless types) and function bodies
    (with top_level)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and not types and _type_checking(node):
            stack.extend(node.orelse)
        elif top_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        else:
            stack.extend(ast.iter_child_nodes(node))


def _with_packages(name: str, mods: dict[str, Path]) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts) + 1) if ".".join(parts[:i]) in mods]


def graph(top_level: bool = False, root: Path = ROOT, types: bool = False) -> dict[str, set[str]]:
    mods = modules(root)
    g: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), str(path)), top_level, types):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    src = ".".join(base + ([node.module] if node.module else []))
                else:
                    src = node.module or ""
                targets = [src] + [f"{src}.{a.name}" for a in node.names]
            for t in targets:
                if t.startswith("edgekit"):
                    for m in _with_packages(t, mods):
                        if m != mod and not mod.startswith(m + "."):  # its own package: not a cycle
                            g[mod].add(m)
    return g


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on, stack, out = set(), [], []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def path_in(g: dict[str, set[str]], comp: list[str]) -> list[str]:
    """One concrete cycle through the component's first module, for the message."""
    start, members = comp[0], set(comp)
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(g[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [start, *path[::-1][1:], start] if len(path) > 1 else [start, v, start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return comp


def short(m: str) -> str:
    return m.removeprefix("edgekit.")


def main(argv: list[str]) -> int:
    top = "--top-level" in argv
    types = "--types" in argv
    known = [argv[i + 1].split(":") for i, a in enumerate(argv) if a == "--known"]
    g = graph(top_level=top, types=types)
    for a, b in known:
        cut = {m for m in g.get(f"edgekit.{a}", ()) if short(m) == b or short(m).startswith(b + ".")}
        if cut:
            g[f"edgekit.{a}"] -= cut
            print(f"known, left out: {a} -> {', '.join(sorted(short(m) for m in cut))}")
    if "--graph" in argv:
        for m in sorted(g):
            print(short(m), "->", ", ".join(sorted(short(x) for x in g[m])))
    found = cycles(g)
    for comp in found:
        cyc = " -> ".join(short(m) for m in path_in(g, comp))
        print(
            f"cycle ({len(comp)} modules): {cyc}"
            + ("" if len(comp) <= 3 else f"\n  all: {', '.join(sorted(short(m) for m in comp))}")
        )
    n_edges = sum(len(v) for v in g.values())
    print(
        f"{len(g)} modules, {n_edges} imports "
        f"({'top level' if top else 'all, TYPE_CHECKING too' if types else 'all but TYPE_CHECKING'}): "
        f"{len(found)} cycle(s)"
    )
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
