"""The house (issue 21): no import cycles, and the module map and import rewriter that moved it."""

# rewrite_imports: skip (the snippets below hold old module paths on purpose)

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import check_imports  # noqa: E402
import module_map  # noqa: E402
import rewrite_imports  # noqa: E402


def _check(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_imports.py"), *args], capture_output=True, text=True
    )


def test_no_import_cycles():
    r = _check()
    assert r.returncode == 0, r.stdout
    assert " 0 cycle(s)" in r.stdout


def test_no_import_cycles_even_for_type_names():
    r = _check("--types")
    assert r.returncode == 0, r.stdout
    assert "TYPE_CHECKING too): 0 cycle(s)" in r.stdout


def test_the_checker_finds_a_cycle_through_a_deferred_import(tmp_path):
    pkg = tmp_path / "edgekit"
    (pkg / "room").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "room" / "__init__.py").write_text("")
    (pkg / "room" / "a.py").write_text("from ..b import f\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import X\ndef f():\n    from .room import a\n"
    )
    (pkg / "c.py").write_text("from .b import f\n")
    g = check_imports.graph(root=tmp_path)
    assert check_imports.cycles(g) == [["edgekit.b", "edgekit.room.a"]]  # b -> c only under TYPE_CHECKING
    assert check_imports.cycles(check_imports.graph(top_level=True, root=tmp_path)) == []
    # counting type names too, b -> c closes the circle b -> c -> b
    assert check_imports.cycles(check_imports.graph(root=tmp_path, types=True)) == [
        ["edgekit.b", "edgekit.c", "edgekit.room.a"]
    ]


def test_every_move_landed():
    for old, new in module_map.FILES.items():
        if old in module_map.SHIMS:
            body = (ROOT / old).read_text().split('"""')[-1].strip()
            assert body.startswith(f"from .core.{Path(old).stem} import *") and "\n" not in body, old
        else:
            assert not (ROOT / old).exists(), old
        assert (ROOT / new).is_file(), new
    for names in module_map.SPLIT.values():
        for name, mod in names.items():
            text = (ROOT / (mod.replace(".", "/") + ".py")).read_text()
            assert f"def {name}(" in text or f"{name} = " in text, (name, mod)


def _rw(text, where):
    out = rewrite_imports.rewrite_text(text, ROOT / where)
    assert rewrite_imports.rewrite_text(out, ROOT / where) == out  # a second run changes nothing
    return out


def test_a_moved_file_reads_its_old_relative_imports_against_its_old_folder():
    old = "from .child import ChildDied, run_child\nfrom .limits import apply\nfrom .results import Record\n"
    assert _rw(old, "edgekit/measure/bench.py") == (
        "from ..core.child import ChildDied, run_child\nfrom .limits import apply\nfrom ..results import Record\n"
    )
    assert _rw("def f():\n    from . import ENGINES\n    from .. import pages\n", "edgekit/measure/worker.py") == (
        "def f():\n    from ..backends.engines import ENGINES\n    from . import pages\n"
    )
    # a file added to an old folder on another branch, carried into the new one by the merge
    assert _rw(
        "from ..base import BuildContext\nfrom ...errors import ArtifactError  # why\n",
        "edgekit/backends/gguf/mmproj.py",
    ) == ("from ..format import BuildContext\nfrom ...core.errors import ArtifactError  # why\n")


def test_names_split_per_room_and_dotted_strings_follow():
    src = (
        "from . import bench, errors\nfrom .integrity import check_member, NonFinite\n"
        "from edgekit.build import build\nfrom edgekit.manifest import MANIFEST\n"
        "import edgekit.formats.gguf.quantize as q\n"
        'patch("edgekit.bench._target")\ncmd = ["-m", "edgekit.child", "edgekit.runners.measure:measure"]\n'
        'code = "from edgekit import limits, errors\\nlimits.x()"\n'
    )
    assert _rw(src, "edgekit/newmod.py") == (
        "from .measure import bench\nfrom .core import errors\nfrom .core.names import check_member\n"
        "from .builder.source_scan import NonFinite\nfrom edgekit.builder.pipeline import build\n"
        "from edgekit.builder.manifest import MANIFEST\nimport edgekit.backends.gguf.quantize as q\n"
        'patch("edgekit.measure.bench._target")\n'
        'cmd = ["-m", "edgekit.core.child", "edgekit.measure.worker:measure"]\n'
        'code = "from edgekit.measure import limits; from edgekit.core import errors\\nlimits.x()"\n'
    )


def test_the_tree_is_rewritten():
    """Nothing left to rewrite."""
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "rewrite_imports.py"),
            "--check",
            *(str(ROOT / d) for d in ("edgekit", "tests", "benchmarks", "scripts")),
        ],
        capture_output=True,
        text=True,
    )
    left = sorted(Path(line.split()[-1]).relative_to(ROOT).as_posix() for line in r.stdout.splitlines())
    assert left == [], r.stdout


# ---------------------------------------------------------------- function-local imports

# Files whose function-local imports are still to be sorted out (moved to the top or marked); empty now: an
# entry added here must have unmarked imports left, and comes off once its file is clean.
LOCAL_IMPORTS_PENDING: tuple[str, ...] = ()
MARK = "# deferred:"


def unmarked_local_imports(source: str) -> list[int]:
    """Lines of imports inside a function that no ``# deferred: <why>`` comment explains: on the import's
    own line, or on the line just above a run of consecutive imports."""
    lines = source.splitlines()
    out = []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            for field in ("body", "orelse", "finalbody", "handlers"):
                stmts = getattr(node, field, None)
                if not isinstance(stmts, list):
                    continue
                run: list[ast.stmt] = []
                for stmt in [*stmts, None]:
                    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                        run.append(stmt)
                        continue
                    if run:
                        above = lines[run[0].lineno - 2].strip() if run[0].lineno > 1 else ""
                        marked = above.startswith(MARK) or any(
                            MARK in line for s in run for line in lines[s.lineno - 1 : s.end_lineno]
                        )
                        out += [] if marked else [s.lineno for s in run]
                    run = []
    return sorted(set(out))


def test_function_local_imports_say_why_they_are_deferred():
    pkg = ROOT / "edgekit"
    found, pending_clean = [], []
    for path in sorted(pkg.rglob("*.py")):
        rel = path.relative_to(pkg).as_posix()
        bad = unmarked_local_imports(path.read_text())
        if rel.startswith(LOCAL_IMPORTS_PENDING):
            continue
        found += [f"edgekit/{rel}:{n}" for n in bad]
    for entry in LOCAL_IMPORTS_PENDING:
        files = list(pkg.glob(entry + "**/*.py" if entry.endswith("/") else entry))
        if files and not any(unmarked_local_imports(p.read_text()) for p in files):
            pending_clean.append(entry)
    assert not found, "import at the module top, or say why not with '# deferred: <why>':\n" + "\n".join(found)
    assert not pending_clean, f"no unmarked local imports left: drop {pending_clean} from LOCAL_IMPORTS_PENDING"


def test_the_local_import_check_sees_marks():
    src = (
        "import os\n"
        "def a():\n    import json\n    return json\n"
        "def b():\n    # deferred: heavy\n    import torch\n    import transformers\n"
        "def c():\n    try:\n        import mlx  # deferred: the mlx extra\n    except ImportError:\n        pass\n"
        "def d():\n    if True:\n        from . import x\n"
    )
    assert unmarked_local_imports(src) == [3, 16]
