"""Child entries that wait before doing the real work, so a test's signal lands while the real child
process is running (tests/faults/test_children.py); imported in the child via PYTHONPATH."""

from __future__ import annotations

import time
from pathlib import Path


def slow_quantize(spec, step):
    from edgekit.backends.gguf.quantize import quantize_child

    Path(spec.dst).write_bytes(b"partial")  # the quantizer's output exists, as mid-quantization
    Path(spec.dst + ".started").touch()
    time.sleep(120)
    return quantize_child(spec, step)


def fails(spec, step):
    from edgekit.core.errors import ArtifactError

    step("about to fail")
    raise ArtifactError(f"{spec.src}: refused in the child")


def crashes(spec, step):
    import os
    import sys

    print("engine says: out of cheese", file=sys.stderr, flush=True)
    os._exit(3)
