"""Where each edgekit module went in the house move (issue 21, phase 1): old file -> new file.

``MODULES`` (old dotted path -> new dotted path) is derived from it; ``PACKAGES`` maps the folders that
moved as a whole, so a file added later inside an old folder still resolves its relative imports.
scripts/rewrite_imports.py reads both. Removed modules (integrity.py, dissolved) are in ``SPLIT``: each
public name -> the module that holds it now.
"""

from __future__ import annotations

FILES: dict[str, str] = {
    # the command line's helpers, moved when cli.py became the cli/ package (one module per command group)
    "edgekit/cliopts.py": "edgekit/cli/options.py",
    "edgekit/listing.py": "edgekit/cli/listing.py",
    "edgekit/repl.py": "edgekit/serve/repl.py",
    # core/: what every room uses
    "edgekit/errors.py": "edgekit/core/errors.py",
    "edgekit/registry.py": "edgekit/core/registry.py",
    "edgekit/fields.py": "edgekit/core/fields.py",
    "edgekit/fsutil.py": "edgekit/core/fsutil.py",
    "edgekit/host.py": "edgekit/core/host.py",
    "edgekit/child.py": "edgekit/core/child.py",
    "edgekit/progress.py": "edgekit/core/progress.py",
    # model/: the source checkpoint
    "edgekit/gemma4.py": "edgekit/model/gemma4.py",
    "edgekit/checkpoint.py": "edgekit/model/checkpoint.py",
    "edgekit/safetensors_io.py": "edgekit/model/safetensors_io.py",
    "edgekit/dtypes.py": "edgekit/model/dtypes.py",
    # profiles/: data that says what to build and how to run it
    "edgekit/targets.py": "edgekit/profiles/targets.py",
    "edgekit/recipes.py": "edgekit/profiles/recipes.py",
    "edgekit/knobs.py": "edgekit/profiles/knobs.py",
    # backends/: the format and engine registries, their protocols, one folder per backend
    "edgekit/formats/__init__.py": "edgekit/backends/formats.py",
    "edgekit/formats/base.py": "edgekit/backends/format.py",
    "edgekit/runners/__init__.py": "edgekit/backends/engines.py",
    "edgekit/runners/base.py": "edgekit/backends/runner.py",
    "edgekit/formats/gguf/__init__.py": "edgekit/backends/gguf/format.py",
    "edgekit/formats/gguf/convert.py": "edgekit/backends/gguf/convert.py",
    "edgekit/formats/gguf/header.py": "edgekit/backends/gguf/header.py",
    "edgekit/formats/gguf/quantize.py": "edgekit/backends/gguf/quantize.py",
    "edgekit/formats/gguf/vocab.py": "edgekit/backends/gguf/vocab.py",
    "edgekit/runners/llamacpp.py": "edgekit/backends/gguf/runner.py",
    "edgekit/formats/mlx/__init__.py": "edgekit/backends/mlx/format.py",
    "edgekit/formats/mlx/convert.py": "edgekit/backends/mlx/convert.py",
    "edgekit/runners/mlx.py": "edgekit/backends/mlx/runner.py",
    "edgekit/mlx_ple.py": "edgekit/backends/mlx/ple.py",
    # builder/: checkpoint -> artifacts + manifest (not build/: tools read a folder named build as output)
    "edgekit/build.py": "edgekit/builder/pipeline.py",
    "edgekit/staging.py": "edgekit/builder/staging.py",
    "edgekit/manifest.py": "edgekit/builder/manifest.py",
    "edgekit/vocab/__init__.py": "edgekit/builder/vocab/__init__.py",
    "edgekit/vocab/lean.py": "edgekit/builder/vocab/lean.py",
    "edgekit/vocab/select.py": "edgekit/builder/vocab/select.py",
    # measure/: bench orchestration, the bench child, memory, pages, limits and the budget gate
    "edgekit/bench.py": "edgekit/measure/bench.py",
    "edgekit/runners/measure.py": "edgekit/measure/worker.py",
    "edgekit/memory.py": "edgekit/measure/memory.py",
    "edgekit/pages.py": "edgekit/measure/pages.py",
    "edgekit/limits.py": "edgekit/measure/limits.py",
    "edgekit/budget.py": "edgekit/measure/budget.py",
    "edgekit/roofline.py": "edgekit/measure/roofline.py",
    "edgekit/sweep.py": "edgekit/measure/sweep.py",
    # serve/: edgekit run and serve
    "edgekit/server.py": "edgekit/serve/http.py",
    "edgekit/session.py": "edgekit/serve/session.py",
    "edgekit/generate.py": "edgekit/serve/generate.py",
    "edgekit/chat.py": "edgekit/serve/chat.py",
    # dev/: torch-only development tools, not for devices
    "edgekit/synth.py": "edgekit/dev/synth.py",
    "edgekit/tokenizer.py": "edgekit/dev/synthetic_tokenizer.py",
    "edgekit/train.py": "edgekit/dev/train.py",
    "edgekit/hf_model.py": "edgekit/dev/hf_model.py",
    # integrity.py was dissolved: its largest piece (source hash + NaN scan) kept the file's history
    "edgekit/integrity.py": "edgekit/builder/source_scan.py",
    # issue 21 seam 2: the llama.cpp state file behind serve --prefix-cache belongs to its backend
    "edgekit/serve/prefix_cache.py": "edgekit/backends/gguf/prefix_cache.py",
}

# integrity.py's other names, each in the room it belongs to (rewrite_imports.py splits imports of them).
SPLIT: dict[str, dict[str, str]] = {
    "edgekit.integrity": {
        "SAFE_NAME": "edgekit.core.names",
        "check_member": "edgekit.core.names",
        "check_plain_name": "edgekit.core.names",
        "looks_like_path": "edgekit.core.paths",
        "missing_folder": "edgekit.core.paths",
        "to_f16": "edgekit.model.dtypes",
        "check_tokenizer": "edgekit.backends.gguf.vocab",
        # everything else (NonFinite, nonfinite_error, source_fingerprint): edgekit.builder.source_scan
    },
}

# Re-export shims left at old paths while another branch still imported them (none left).
SHIMS: tuple[str, ...] = ()

# Folders that moved as a whole (a file added to the old folder on another branch lands in the new one).
PACKAGES: dict[str, str] = {
    "edgekit.formats": "edgekit.backends",
    "edgekit.formats.gguf": "edgekit.backends.gguf",
    "edgekit.formats.mlx": "edgekit.backends.mlx",
    "edgekit.runners": "edgekit.backends",
    "edgekit.vocab": "edgekit.builder.vocab",
}


def dotted(path: str) -> str:
    mod = path.removesuffix(".py").replace("/", ".")
    return mod.removesuffix(".__init__")


MODULES: dict[str, str] = {dotted(old): dotted(new) for old, new in FILES.items()}

if __name__ == "__main__":
    for old, new in MODULES.items():
        print(f"{old:32} -> {new}")
