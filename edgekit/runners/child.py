"""One artifact's measurement, run as ``python -m edgekit.runners.child SPEC.json FD`` in a fresh process.

A fresh interpreter per artifact keeps one artifact's peak memory (and an engine's global state)
out of the next one's figures. Messages go to the pipe ``FD`` as JSON lines (``step`` for progress,
then ``result`` or ``error``) rather than stdout, which an engine may print to.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any


def measure(spec: dict[str, Any], send: Any) -> dict[str, Any]:
    from ..memory import PeakSampler
    from . import RUNNERS
    from .base import RunOptions, run_reps

    from .. import pages

    # The tests this child runs on one loaded model (a sweep's -p/-n/-d), each [n_prompt, n_gen, depth].
    tests = spec.get("tests") or [[spec["n_prompt"], spec["n_gen"], spec.get("depth", 0)]]
    out = []
    with PeakSampler() as sampler:
        runner = RUNNERS.get(spec["engine"])()
        opts = RunOptions(**spec["opts"])
        t0 = time.perf_counter()
        runner.load(Path(spec["path"]), opts)
        load_ms = (time.perf_counter() - t0) * 1e3
        sampler.sample()
        send({"step": "loaded"})
        for i, (n_prompt, n_gen, depth) in enumerate(tests):
            if i:  # each test's peak is its own; the load's memory is still mapped and counted
                sampler.reset()
            reps = run_reps(runner, n_prompt, n_gen, spec["reps"], seed=spec.get("seed", 0),
                            on_step=lambda s: send({"step": s}), on_sample=sampler.sample, depth=depth)
            # which pages of the mapped artifact are resident at the end of the test (16 KB blocks)
            count = pages.count(Path(spec["path"]))
            out.append({"reps": [r.to_json() for r in reps], "figures": runner.figures(),
                        "memory": asdict(sampler.peak()), "pages": count.to_json() if count else None})
    runner.close()
    return {"load_ms": load_ms, **out[0], "tests": out}


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    if spec.get("engine") == "mlx":
        # mlx-lm imports transformers, which imports torch whenever it is installed (a dev venv):
        # ≈180 MB resident that a device running edgekit[mlx] does not have, for nothing the runner
        # uses (it feeds token ids). transformers treats a blocked torch as absent.
        sys.modules.setdefault("torch", None)  # type: ignore[assignment]
    out = os.fdopen(int(argv[1]), "w", buffering=1)

    def send(msg: dict[str, Any]) -> None:
        out.write(json.dumps(msg) + "\n")

    from ..errors import EdgekitError

    try:
        send({"result": measure(spec, send)})
    except EdgekitError as e:
        send({"error": {"type": e.__class__.__name__, "message": e.message}})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
