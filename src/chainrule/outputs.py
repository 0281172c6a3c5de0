"""Files a command writes, and what it shows while it works.

Every output file goes through :func:`atomic_output`: the content is written to a temporary file
in the destination's folder, flushed and fsync'ed, then renamed over the destination. A failure
part way (a full disk, Ctrl-C, an exception) removes the temporary file and leaves whatever was
at the destination before untouched: a reader sees the old file or the whole new one, never a
half-written one.

Commands check their output paths with :func:`check_output` *before* the work starts, so a
mistake (a folder that does not exist, a path below a file, a name too long) costs nothing.

Progress: :func:`progress` is a tqdm bar on a terminal and nothing off one (pipes and log files
get no bar characters); :func:`say` prints one plain line to stderr unless quiet.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


class OutputError(ValueError):
    """An output path that cannot be written: one clear message."""


def _describe_oserror(e: OSError, path: Path) -> str:
    if e.errno == errno.ENOSPC:
        return f"cannot write {path}: the disk is full (nothing was written)"
    if e.errno == errno.EDQUOT:
        return f"cannot write {path}: disk quota exceeded (nothing was written)"
    if e.errno == errno.ENAMETOOLONG:
        return f"cannot write {path}: the file name is too long"
    if e.errno == errno.ENOTDIR:
        return f"cannot write {path}: a part of the path is a file, not a folder"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {path}: permission denied (read-only folder or file system?)"
    if e.errno == errno.EFBIG:
        return f"cannot write {path}: the file is too large for this file system or limit"
    return f"cannot write {path}: {e.strerror or e}"


def name_max(folder: str | os.PathLike) -> int:
    """The longest file name (bytes) the file system of ``folder`` accepts (255 if unknown)."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def check_output(path: str | os.PathLike, *, what: str = "output") -> Path:
    """Refuse, before any work, an output path that cannot be written; return it as a Path.

    The folder must exist and be a folder; the name must fit the file system; a test file is
    created and removed next to it (so a read-only or full file system is caught for root too,
    where permission bits are not).
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OutputError(f"cannot write {what} {path}: it is a folder (give a file name)")
    if not parent.exists():
        # a path below an existing file shows up here as a missing folder: say which
        for up in [parent, *parent.parents]:
            if up.exists() and not up.is_dir():
                raise OutputError(f"cannot write {what} {path}: {up} is a file, not a folder")
        raise OutputError(f"cannot write {what} {path}: folder {parent} does not exist")
    if not parent.is_dir():
        raise OutputError(f"cannot write {what} {path}: {parent} is a file, not a folder")
    max_name = name_max(parent)
    if len(os.fsencode(path.name)) > max_name:
        raise OutputError(
            f"cannot write {what} {path.name[:40]}...: the file name is too long "
            f"({len(os.fsencode(path.name))} bytes; this file system allows {max_name})"
        )
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name[:100]}.", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise OutputError(_describe_oserror(e, path)) from None
    return path


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view[: 1 << 20])
        view = view[n:]


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename).

    On any failure the temporary file is removed, the destination is left as it was, and an
    :class:`OutputError` (for an ``OSError``) says why in one line.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name[:100]}.", suffix=".tmp")
        try:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise OutputError(_describe_oserror(e, path)) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    import json

    return write_text(path, json.dumps(obj, indent=2) + "\n")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Any]:
    """``with atomic_output(p) as f: f.write(...)``: ``f`` is an in-memory binary buffer whose
    content is written to ``p`` atomically when the block ends without an exception."""
    import io

    buf = io.BytesIO()
    yield buf
    write_bytes(path, buf.getvalue())


def save_figure(fig, path: str | os.PathLike, **kw) -> Path:
    """``fig.savefig`` into memory, then an atomic write (no truncated PNG on a full disk)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in fig.canvas.get_supported_filetypes():
        fmt = "png"  # a name without a known picture suffix: PNG
    with atomic_output(path) as f:
        fig.savefig(f, format=fmt, **kw)
    return path


def save_pil(img, path: str | os.PathLike) -> Path:
    """``PIL.Image.save`` into memory, then an atomic write."""
    from PIL import Image

    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")  # unknown suffix: PNG
    with atomic_output(path) as f:
        img.save(f, format=fmt)
    return path


def save_npz(path: str | os.PathLike, **arrays) -> Path:
    """``numpy.savez_compressed`` into memory, then an atomic write."""
    import numpy as np

    with atomic_output(path) as f:
        np.savez_compressed(f, **arrays)
    return Path(path)


# ---------------------------------------------------------------------- progress
#: set by the CLI's --quiet: no bars, no progress lines
QUIET = False


def interactive() -> bool:
    """A person is watching: stderr is a terminal and --quiet was not given."""
    return not QUIET and sys.stderr.isatty()


def progress(
    iterable: Iterable, *, desc: str = "", total: int | None = None, leave: bool = False, **kw
):
    """A tqdm bar on a terminal; the plain iterable otherwise (no bar characters in logs)."""
    if not interactive():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=leave, dynamic_ncols=True, **kw)


def say(msg: str) -> None:
    """One line of progress on stderr (not under --quiet)."""
    if not QUIET:
        print(msg, file=sys.stderr, flush=True)


class Timer:
    """Seconds since construction, for 'epoch 3 ... (12.3 s)' lines."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start


def random_subset(n_total: int, n: int | None, seed: int = 0):
    """Indices of ``n`` of ``n_total`` items drawn at random (without replacement) with
    ``seed``, in increasing order; all of them when ``n`` is None or >= ``n_total``.

    The one way every command takes a subset (``--n``, ``--max-images``, ``--max-train``):
    data sets are often sorted by class, so "the first N" is not a sample of them.
    """
    import torch

    if n is None or n >= n_total:
        return torch.arange(n_total)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_total, generator=g)[:n].sort().values
