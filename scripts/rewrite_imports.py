"""Rewrite old edgekit module paths to their new homes (scripts/module_map.py), in place.

    python scripts/rewrite_imports.py FILE_OR_FOLDER ...      (a folder: every .py under it)
    python scripts/rewrite_imports.py --check FILE ...        (list what would change, exit 1 if anything)

What it rewrites:
- ``from edgekit.bench import X`` / ``from .bench import X`` / ``from .. import errors`` /
  ``from edgekit import bench``: the module, split per name where names went to different rooms
  (integrity.py's pieces); a relative import stays relative, from the file's current folder. A file
  that itself moved resolves its old relative imports against its old folder first.
- any dotted ``edgekit.x.y`` outside from-imports: ``import edgekit.x as y``, ``mock.patch("edgekit.x.f")``,
  ``"-m", "edgekit.child"``, ``run_child("edgekit.runners.measure:measure")``, logger names, docstrings.
Running it twice changes nothing. A file holding the line ``# rewrite_imports: skip`` is left alone.
An old module that is also a new package's name reads as the old module, unless the name after it is
a submodule of the new package (no move needs it today: build.py went to builder/pipeline.py).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from module_map import FILES, MODULES, PACKAGES, SPLIT, dotted

ROOT = Path(__file__).resolve().parent.parent
DOTTED = re.compile(r"\bedgekit(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
# an absolute from-import written inside a string (code a test runs with python -c)
FROM_IN_TEXT = re.compile(r"\bfrom (edgekit(?:\.\w+)*) import (\w+(?: as \w+)?(?:, \w+(?: as \w+)?)*)")


def _tree_modules(root: Path) -> set[str]:
    """Modules and packages that exist in the (moved) tree: the new names."""
    out = {"edgekit"}
    for p in (root / "edgekit").rglob("*.py"):
        out.add(dotted(str(p.relative_to(root))))
    return out


NEW = _tree_modules(ROOT)
REVERSE = {new: old for old, new in MODULES.items()}
REVERSE_PKG = {new: old for old, new in PACKAGES.items()}


def _longest(name: str, keys) -> str | None:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        p = ".".join(parts[:i])
        if p in keys:
            return p
    return None


def map_dotted(name: str) -> str | None:
    """The new dotted path for ``name`` (a module, or module.attribute), or None if it is not old."""
    old = _longest(name, MODULES.keys() | SPLIT.keys())
    if old is None:
        return None
    new = _longest(name, NEW)
    rest = name[len(old) + 1 :]
    if new is not None and len(new) > len(old):
        return None  # already a new path
    if new == old and old not in SPLIT:  # an old module that is also a new package
        first = rest.split(".")[0] if rest else ""
        if first and f"{old}.{first}" in NEW:
            return None
    if old in SPLIT:
        first = rest.split(".")[0] if rest else ""
        target = SPLIT[old].get(first, MODULES.get(old, old))
        return f"{target}.{rest}" if rest else target
    return f"{MODULES[old]}.{rest}" if rest else MODULES[old]


_DEFINED: dict[str, set[str]] = {}


def _defined(module: str) -> set[str]:
    """Top-level names a module of the new tree defines or imports."""
    if module not in _DEFINED:
        base = ROOT / module.replace(".", "/")
        path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        names: set[str] = set()
        if path.is_file():
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    names.add(node.name)
                elif isinstance(node, (ast.Import, ast.ImportFrom)):
                    names.update((a.asname or a.name).split(".")[0] for a in node.names)
                elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                    for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                        names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
        _DEFINED[module] = names
    return _DEFINED[module]


def _valid(module: str | None, names: list[str]) -> bool:
    """Does ``from module import names`` read as an import of the new tree?"""
    return (
        module is not None
        and module in NEW
        and all(n == "*" or f"{module}.{n}" in NEW or n in _defined(module) for n in names)
    )


def _resolve(level: int, module: str | None, pkg: str) -> str | None:
    parts = pkg.split(".")
    if level - 1 > len(parts) - 1:
        return None
    base = parts[: len(parts) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _relative(target: str, pkg: str) -> tuple[int, str]:
    t, p = target.split("."), pkg.split(".")
    n = 0
    while n < min(len(t), len(p)) and t[n] == p[n]:
        n += 1
    return len(p) - n + 1, ".".join(t[n:])


def _file_module(path: Path) -> str | None:
    try:
        rel = path.resolve().relative_to(ROOT)
    except ValueError:
        return None
    return dotted(str(rel)) if rel.parts[0] == "edgekit" else None


def _packages(path: Path) -> tuple[str | None, str | None]:
    """(current package, old package) of a file under edgekit/; the old one only if it moved."""
    mod = _file_module(path)
    if mod is None:
        return None, None
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    old_mod = REVERSE.get(mod)
    if old_mod is not None:
        old_src = next(o for o, n in FILES.items() if dotted(n) == mod)
        return pkg, old_mod if old_src.endswith("__init__.py") else old_mod.rpartition(".")[0]
    return pkg, REVERSE_PKG.get(pkg)


def _fmt_from(indent: str, level: int, module: str, names: list[tuple[str, str | None]], tail: str) -> str:
    src = "." * level + module
    items = [f"{n} as {a}" if a else n for n, a in names]
    line = f"{indent}from {src} import {', '.join(items)}{tail}"
    if len(line) <= 120:
        return line
    body = "".join(f"{indent}    {it},\n" for it in items)
    return f"{indent}from {src} import ({tail}\n{body}{indent})"


def rewrite_from(node: ast.ImportFrom, pkg: str | None, old_pkg: str | None) -> list[tuple[int, str, list]] | None:
    """[(level, module, names)] replacing ``node``, or None when it needs no change."""
    if node.level == 0:
        if not (node.module == "edgekit" or (node.module or "").startswith("edgekit.")):
            return None
        source = node.module
    else:
        if pkg is None:
            return None
        source = _resolve(node.level, node.module, pkg)
        # A file that moved (or sits in a folder that moved) holds old relative imports until rewritten:
        # when the import does not read as a new one, read it against the old folder.
        was = _resolve(node.level, node.module, old_pkg) if old_pkg else None
        if was and not _valid(source, [a.name for a in node.names]):
            source = was
        if source is None:
            return None
    groups: dict[str, list] = {}
    for a in node.names:
        sub = f"{source}.{a.name}"
        if sub in MODULES or (sub in SPLIT):  # `from edgekit import bench`: a moved module
            new = MODULES.get(sub, sub)
            frm, _, name = new.rpartition(".")
            groups.setdefault(frm, []).append((name, a.asname or (a.name if name != a.name else None)))
            continue
        if source in SPLIT:
            frm = SPLIT[source].get(a.name, MODULES[source])
        else:
            frm = map_dotted(source) or source
            if source in NEW and f"{source}.{a.name}" in NEW:
                frm = source
        groups.setdefault(frm, []).append((a.name, a.asname))
    cur = node.module if node.level == 0 else _resolve(node.level, node.module, pkg)
    if list(groups) == [cur]:
        return None
    out = []
    for frm, names in groups.items():
        if node.level == 0:
            out.append((0, frm, names))
        else:
            out.append((*_relative(frm, pkg), names))
    return out


def _from_in_text(m: re.Match) -> str:
    node = ast.parse(m.group(0)).body[0]
    new = rewrite_from(node, None, None)
    if new is None:
        return m.group(0)
    return "; ".join(_fmt_from("", lv, mod, names, "").strip() for lv, mod, names in new)


def rewrite_text(text: str, path: Path) -> str:
    pkg, old_pkg = _packages(path)
    lines = text.splitlines(keepends=True)
    spans: list[tuple[int, int, str]] = []
    skip: set[int] = set()
    if path.suffix == ".py":
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom):
                skip.update(range(node.lineno - 1, node.end_lineno))
                new = rewrite_from(node, pkg, old_pkg)
                if new is None:
                    continue
                first, last = lines[node.lineno - 1], lines[node.end_lineno - 1]
                indent = first[: len(first) - len(first.lstrip())]
                tail = last.rstrip("\n")[node.end_col_offset :]
                stmt = "\n".join(
                    _fmt_from(indent, lv, m, names, tail if i == len(new) - 1 else "")
                    for i, (lv, m, names) in enumerate(new)
                )
                spans.append((node.lineno - 1, node.end_lineno, stmt + "\n"))
    for i, line in enumerate(lines):
        if i not in skip:
            line = FROM_IN_TEXT.sub(_from_in_text, line)
            lines[i] = DOTTED.sub(lambda m: map_dotted(m.group(0)) or m.group(0), line)
    for start, end, stmt in sorted(spans, reverse=True):
        lines[start:end] = [stmt]
    return "".join(lines)


SKIP = "# rewrite_imports: skip"  # a file that names old paths on purpose (tests/test_house.py)
SELF = {Path(__file__).resolve(), Path(__file__).resolve().parent / "module_map.py"}


def files(args: list[str]) -> list[Path]:
    out = []
    for a in args:
        p = Path(a)
        out.extend(sorted(p.rglob("*.py")) if p.is_dir() else [p])
    return [p for p in out if p.resolve() not in SELF]  # the map itself names the old paths


def main(argv: list[str]) -> int:
    check = "--check" in argv
    changed = []
    for p in files([a for a in argv if a != "--check"]):
        text = p.read_text()
        if SKIP in text:
            continue
        new = rewrite_text(text, p)
        if new != text:
            changed.append(p)
            if not check:
                p.write_text(new)
    for p in changed:
        print(("would rewrite " if check else "rewrote ") + str(p))
    return 1 if (check and changed) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
