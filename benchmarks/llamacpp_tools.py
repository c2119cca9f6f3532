"""llama.cpp's own tools (convert_hf_to_gguf.py, llama-quantize, llama-bench, llama-perplexity) as the reference.

They are not in the llama-cpp-python wheel, so this builds them from the same llama.cpp commit the
wheel vendors: the llama-cpp-python sdist of the installed version, fetched from PyPI with pip,
built with cmake into .cache/llama.cpp/<version>/ once (≈5 min on 2 cores) and reused.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

log = logging.getLogger("benchmarks")
ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("llama-quantize", "llama-bench", "llama-perplexity", "llama-imatrix", "llama-mtmd-cli")


def cache_dir() -> Path:
    # Resolved: .cache is a symlink into the shared checkout, and cmake bakes the build folder's path
    # into the tools' RUNPATH; a build made through a worktree's symlink stopped loading its libraries
    # once that worktree was removed ("libllama-perplexity-impl.so: cannot open shared object file").
    return (ROOT / ".cache").resolve() / "llama.cpp" / metadata.version("llama-cpp-python")


def source() -> Path:
    """The vendored llama.cpp tree of the installed llama-cpp-python version."""
    base = cache_dir()
    src = next(base.glob("llama_cpp_python-*/vendor/llama.cpp"), None)
    if src is not None:
        return src
    base.mkdir(parents=True, exist_ok=True)
    version = metadata.version("llama-cpp-python")
    log.info("fetching the llama-cpp-python %s sdist for llama.cpp's tools", version)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "-q",
            "-d",
            str(base),
            f"llama-cpp-python=={version}",
        ],
        check=True,
    )
    sdist = next(base.glob("llama_cpp_python-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        tar.extractall(base, filter="data")
    return next(base.glob("llama_cpp_python-*/vendor/llama.cpp"))


def tool(name: str) -> Path:
    """Path to a built llama.cpp tool, building all of TOOLS on first use."""
    build = cache_dir() / "build"
    exe = build / "bin" / name
    if exe.is_file():
        return exe
    src = source()
    args = [
        "cmake",
        "-S",
        str(src),
        "-B",
        str(build),
        "-DCMAKE_BUILD_TYPE=Release",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_SERVER=OFF",
        "-DCMAKE_BUILD_RPATH_USE_ORIGIN=ON",
    ]  # RUNPATH $ORIGIN: the tools find their libraries wherever the folder is
    if platform.machine() == "x86_64":
        args.append("-DGGML_NATIVE=OFF")  # the same flag the wheel is built with (AMX segfault)
    log.info("building llama.cpp tools %s (a few minutes, once)", ", ".join(TOOLS))
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2), "--target", *TOOLS],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return exe


def tool_env() -> dict[str, str]:
    """The environment to run a built tool in: its own folder first on LD_LIBRARY_PATH, so a build whose
    RUNPATH names a folder that no longer exists (one made before cache_dir() resolved the symlink)
    still finds its libraries. Only for the tools' subprocesses: a Python child would load these
    libraries ahead of the llama-cpp-python wheel's."""
    lib = str(cache_dir() / "build" / "bin")
    old = os.environ.get("LD_LIBRARY_PATH")
    return dict(os.environ, LD_LIBRARY_PATH=lib + (os.pathsep + old if old else ""))


def converter() -> tuple[Path, dict[str, str]]:
    """convert_hf_to_gguf.py and the environment it needs (its own gguf-py on PYTHONPATH)."""
    src = source()
    env = dict(os.environ, PYTHONPATH=str(src / "gguf-py"))
    return src / "convert_hf_to_gguf.py", env


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    for t in TOOLS:
        print(tool(t))
