"""Compiled CPU kernels, built once per machine with its C++ compiler, used where they pay.

What is here, each a loop the PyTorch paths run as many small operations per step (the same
arithmetic in one call; the tests hold each to its oracle in float64 and to its PyTorch path):

* :func:`nade` (``nade.h``): the binary NADE loop, training forward and backward, sampling
  and completion, over tiles of rows whose hidden units stay in the core's cache (the sparse
  path of :mod:`chainrule.models.nade` does about eight operations per pixel);
* :func:`diagonal` (``diagonal.h``): the Diagonal BiLSTM's walk over the diagonals, cell by
  cell, the two state products fused with the LSTM update, one thread per direction;
* :func:`row_lstm` (``row_lstm.h``): the Row LSTM's rows, each row's product left to
  ``at::addmm``, its LSTM update and derivative one fused pass.

How it is built: the three are one library (``kernels.cpp`` includes them: PyTorch's headers,
the slow part of a build, are parsed once), built on first use with ``torch.utils.cpp_extension`` (the compiler PyTorch finds:
``$CXX`` or ``c++``), ``-O3``, AVX2/FMA where the CPU has them, glibc's vector ``exp`` (libmvec)
on x86-64 Linux, no OpenMP (the kernels start their own threads, never more than
``torch.get_num_threads()``).
It is built in a fresh temporary folder and the finished library moved into the cache
(``$CHAINRULE_CACHE`` or ``~/.cache/chainrule``, under ``native/``) in one rename, so an
interrupted build leaves nothing half-written and never a lock behind; the file's name carries a
hash of the sources, the flags and the versions of PyTorch and Python.

When it is used: ``CHAINRULE_NATIVE=0`` never; ``=1`` always (an error if it cannot be built);
unset (the default) whenever it can be built, else the PyTorch path after one warning that says
why. Building takes about a minute, once; ``python -m chainrule.native`` builds the library
ahead of use (``make install`` does) and says where they are or why not.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import shutil
import sys
import sysconfig
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import torch

HERE = Path(__file__).resolve().parent
ENV = "CHAINRULE_NATIVE"

_loaded: dict[str, ModuleType | None] = {}
_why: dict[str, str] = {}
_disabled = 0


class NativeUnavailable(RuntimeError):
    """The compiled kernels were required (``CHAINRULE_NATIVE=1``) and could not be built."""


def mode() -> str:
    """``"off"``, ``"on"`` or ``"auto"`` from ``$CHAINRULE_NATIVE``."""
    v = os.environ.get(ENV, "").strip().lower()
    if v in ("0", "off", "no", "false"):
        return "off"
    if v in ("1", "on", "yes", "true"):
        return "on"
    return "auto"


def cache_dir() -> Path:
    root = os.environ.get("CHAINRULE_CACHE") or os.path.join(Path.home(), ".cache", "chainrule")
    return Path(root) / "native"


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def build_flags() -> tuple[list[str], list[str]]:
    """(compile flags, link flags) for this machine."""
    cflags, ldflags = ["-O3", "-fopenmp-simd", "-fno-math-errno"], []
    if platform.machine() in ("x86_64", "AMD64"):
        flags = _cpu_flags()
        if {"avx2", "fma"} <= flags:
            cflags += ["-mavx2", "-mfma"]
        if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
            cflags.append("-DCHAINRULE_LIBMVEC")
            ldflags.append("-lmvec")
    return cflags, ldflags


SOURCES = ("kernels.cpp", "common.h", "nade.h", "diagonal.h", "row_lstm.h")


def _module_name(cflags: list[str], ldflags: list[str]) -> str:
    texts = [(HERE / f).read_text() for f in SOURCES]
    key = "\n".join(
        [*texts, *cflags, *ldflags, torch.__version__, sys.version, sysconfig.get_platform()]
    )
    return f"chainrule_kernels_{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _import(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def library_path() -> tuple[str, Path]:
    """The module name of the kernels' library on this machine and where it is cached."""
    cflags, ldflags = build_flags()
    name = _module_name(cflags, ldflags)
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    return name, cache_dir() / f"{name}{suffix}"


def _build() -> ModuleType:
    from torch.utils import cpp_extension

    src = HERE / "kernels.cpp"
    cflags, ldflags = build_flags()
    name, target = library_path()
    if target.exists():
        try:
            return _import(name, target)
        except (ImportError, OSError):  # not a library this Python can load: build it again
            target.unlink(missing_ok=True)
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        raise RuntimeError("no C++ compiler found ($CXX or c++)")
    print(
        f"chainrule: building the native kernels once (about a minute) into {target.parent}",
        file=sys.stderr,
        flush=True,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chainrule-build-") as tmp:
        try:
            cpp_extension.load(
                name,
                [str(src)],
                extra_cflags=cflags,
                extra_ldflags=ldflags,
                build_directory=tmp,
                verbose=False,
            )
        except Exception as err:  # compiler errors come as RuntimeError or subprocess errors
            lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
            first = next(
                (ln for ln in lines if "error:" in ln),  # the compiler's own message
                next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else ""),
            )
            raise RuntimeError(f"build failed: {first[:200]}") from err
        built = next(Path(tmp).glob(f"{name}*.so"), None)
        if built is None:
            raise RuntimeError("build produced no library")
        part = target.with_name(f".{target.name}.{os.getpid()}.part")
        shutil.copyfile(built, part)
        os.replace(part, target)  # atomic: a reader sees the whole file or none
    return _import(name, target)


@contextmanager
def disabled() -> Iterator[None]:
    """Within this block :func:`load` gives None: the PyTorch paths run (to compare them)."""
    global _disabled
    _disabled += 1
    try:
        yield
    finally:
        _disabled -= 1


def library() -> ModuleType | None:
    """The compiled library (its kernels are submodules), or None where it cannot or must not
    be used."""
    if _disabled:
        return None
    if "kernels" in _loaded:
        return _loaded["kernels"]
    m = mode()
    module: ModuleType | None = None
    if m != "off":
        try:
            module = _build()
        except (RuntimeError, OSError, ImportError) as err:
            _why["kernels"] = str(err)
            if m == "on":
                raise NativeUnavailable(
                    f"{ENV}=1 but the native kernels cannot be built: {err}"
                ) from err
            warnings.warn(
                f"chainrule: the native kernels are unavailable ({err}); using the PyTorch "
                f"paths (same results, slower). Set {ENV}=0 to silence this.",
                stacklevel=3,
            )
    else:
        _why["kernels"] = f"{ENV}=0"
    _loaded["kernels"] = module
    return module


def in_use() -> bool:
    """Whether this process has loaded the library (builds nothing): recorded with a run."""
    return _loaded.get("kernels") is not None


def load(stem: str) -> ModuleType | None:
    """Kernel ``stem`` (one of :data:`STEMS`), or None where the library cannot or must not be
    used."""
    module = library()
    return None if module is None else getattr(module, stem)


def nade() -> ModuleType | None:
    """The NADE kernels (``forward``, ``backward``, ``sample``), or None."""
    return load("nade")


def diagonal() -> ModuleType | None:
    """The Diagonal BiLSTM walk (``forward``, ``backward``), or None."""
    return load("diagonal")


def row_lstm() -> ModuleType | None:
    """The Row LSTM rows (``row_lstm_forward``, ``row_lstm_backward``), or None."""
    return load("row_lstm")


def why_not(stem: str | None = None) -> str | None:
    """Why ``load(stem)`` gave None (after it was called), or None: one reason for every
    kernel, since they are one library."""
    return "inside a disabled() block" if _disabled else _why.get("kernels")


STEMS = ("nade", "diagonal", "row_lstm")


def report() -> list[str]:
    """Build (or load) the library; one line per kernel: where it is, or why it is not used."""
    if library() is None:
        return [f"{stem}: not used ({why_not()})" for stem in STEMS]
    return [f"{stem}: {library_path()[1]}" for stem in STEMS]


__all__ = [
    "NativeUnavailable",
    "STEMS",
    "build_flags",
    "cache_dir",
    "diagonal",
    "disabled",
    "in_use",
    "library",
    "library_path",
    "load",
    "mode",
    "report",
    "nade",
    "row_lstm",
    "why_not",
]
