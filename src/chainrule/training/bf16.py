"""Whether bf16 autocast pays on this machine: CUDA GPUs multiply bf16 natively; a CPU does only
when it has bf16 matrix units (Intel AMX ``amx_bf16``, or ``avx512_bf16``). Without them CPU
bf16 autocast runs slower than float32 (0.07-0.8x measured on an AVX2 AMD EPYC, see
``benchmarks/roofline.py``), which the trainer says before it starts.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

#: the /proc/cpuinfo flags that mean bf16 matrix (or vector dot-product) units
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags() -> tuple[str, set[str]]:
    """The CPU's model name and its /proc/cpuinfo flags (empty where there is no such file)."""
    flags: set[str] = set()
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return name, flags


def cpu_bf16() -> dict[str, Any]:
    """What this CPU offers for bf16 products: ``has_bf16_units`` and a one-line ``summary``."""
    name, flags = cpu_flags()
    found = sorted(f for f in (*BF16_FLAGS, "amx_tile", "avx512f") if f in flags)
    units = any(f in flags for f in BF16_FLAGS)
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # older torch
        capability = None
    summary = f"{name}: " + (
        f"bf16 matrix units present ({', '.join(f for f in found if f in BF16_FLAGS)})"
        if units
        else "no bf16 matrix units (no amx_bf16 / avx512_bf16 in /proc/cpuinfo)"
    )
    return {
        "cpu": name,
        "bf16_flags_found": found,
        "torch_cpu_capability": capability,
        "has_bf16_units": units,
        "summary": summary,
    }


def bf16_note(device: torch.device) -> str:
    """The line the trainer prints when ``--bf16`` is on: what the device does with bf16."""
    if device.type == "cuda":
        return f"bf16 autocast on {torch.cuda.get_device_name(device)}; weights, Adam and NLLs in float32"
    info = cpu_bf16()
    if info["has_bf16_units"]:
        return f"bf16 autocast on the CPU ({info['summary']}); weights, Adam and NLLs in float32"
    return (
        f"warning: --bf16 on a CPU without bf16 units ({info['summary']}): autocast runs, but "
        "expect it slower than float32 here"
    )
