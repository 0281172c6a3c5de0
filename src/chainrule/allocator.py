"""Freed memory kept for the next step (glibc's ``malloc``, on the CPU).

A training step on the CPU allocates and frees the same large tensors every time (the Row
LSTM's buffer of taps is 29 MB a layer at batch 64). glibc's ``malloc`` may give a freed block
of that size back to the system (``munmap``, or a trim of its heap), and then the next step's
block is fresh memory that the kernel maps and zeroes one page fault at a time: first writes to
a fresh 29 MB tensor took about 10 ms here, against 1.3 ms for the same tensor written again.
Whether it does depends on the process's history: glibc's threshold for ``mmap`` moves up to
the size of the largest block freed so far, but a block allocated again at that size (PyTorch
asks for it aligned, a few bytes more) can still miss it. Measured on this project's 2-core
machine (``benchmarks/allocator.py``, each configuration in its own process, batch 64, paper
sizes; ``benchmarks/results/allocator.json``): in a process that trained without loading a
data set first, the training step took 1.27x (Row LSTM), 1.08x (Diagonal BiLSTM) and 1.11x
(PixelCNN) as long with glibc's defaults as with the memory kept; after loading binarized MNIST
as the trainer does, 0.97x, 0.99x and 1.09x (within this machine's noise), with 4-20 times the
page faults per step.

:func:`keep_freed_memory` sets glibc's ``M_MMAP_THRESHOLD`` to 32 MiB (its largest value: blocks
up to that size come from the heap, not from ``mmap``) and ``M_TRIM_THRESHOLD`` to 1 GiB (the
heap is not handed back while less than that is free at its top), the same as starting Python
with ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824``. The process then
keeps the memory of its largest step (resident size 5-12% above glibc's defaults in the
measurement) instead of asking for it again at every step. Blocks above 32 MiB (the Row LSTM's
taps at an evaluation batch of 256: 115 MB a layer) still come from ``mmap`` each time.
``chainrule``'s commands and the trainer call it; ``CHAINRULE_KEEP_MEMORY=0`` leaves glibc's
defaults. Other C libraries (macOS, musl) are left as they are.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

MMAP_THRESHOLD = 32 << 20  # glibc's largest: HEAP_MAX_SIZE / 2 on 64-bit systems
TRIM_THRESHOLD = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # malloc.h

_state: dict[str, bool] = {}


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()  # glibc only (musl has no such function)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory() -> bool:
    """Ask glibc's ``malloc`` to keep freed blocks of up to 32 MiB for reuse (see the module's
    docstring). Returns whether the setting is in force; once set, later calls do nothing.
    ``CHAINRULE_KEEP_MEMORY=0`` in the environment turns it off (returns False)."""
    if "kept" in _state:
        return _state["kept"]
    kept = False
    if os.environ.get("CHAINRULE_KEEP_MEMORY", "1").strip() != "0":
        libc = _libc()
        if libc is not None:
            kept = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
                libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
            )
    _state["kept"] = kept
    return kept


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` set glibc's thresholds in this process."""
    return _state.get("kept", False)
