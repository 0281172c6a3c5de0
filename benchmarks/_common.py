"""What every benchmark shares: the machine it ran on (threads, load), timing, the result JSON,
and the data through :func:`chainrule.data.load_dataset` (the same files, the same sha256
checks as the CLI; no second loader).

The scripts import it as ``from _common import ...`` (they run as ``python benchmarks/X.py``,
which puts this folder on ``sys.path``); importing it also puts ``src/`` on the path so a
checkout runs without an install, and the repository root, so that a benchmark can time the
test oracles (``from tests.oracles.pixelrnn import ...``).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
for _path in (ROOT / "src", ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import torch  # noqa: E402


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def load_average() -> list[float] | None:
    try:
        return list(os.getloadavg())
    except (OSError, AttributeError):
        return None


def machine(device: torch.device | str | None = None) -> dict[str, Any]:
    """Where a figure was measured: platform, CPUs, torch threads, device (GPU name), load."""
    device = torch.device(device) if device is not None else None
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device is not None:
        info["device"] = str(device)
        if device.type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(device)
    elif torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    info["load_average_at_start"] = load_average()
    return info


def header(device: torch.device | str | None = None, **extra: Any) -> dict[str, Any]:
    """The first fields of every result JSON: command, date, machine, torch version."""
    return {
        "command": shlex.join(["python", *sys.argv]),
        "date": now(),
        "machine": machine(device),
        "torch": torch.__version__,
        **extra,
    }


def set_threads(n: int | None) -> None:
    """Pin torch's intra-op threads (recorded by :func:`machine`); None leaves the default."""
    if n:
        torch.set_num_threads(n)


def sync(device: torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device | str = "cpu") -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call, the device synchronized."""
    device = torch.device(device)
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def best_of(fn, device: torch.device | str = "cpu", repeats: int = 3) -> float:
    """The fastest wall time of ``repeats`` calls (after one warm-up call)."""
    fn()
    return min(timed(fn, device)[0] for _ in range(repeats))


def child_json(cmd: list[str], what: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a benchmark's measurement in its own process (``cmd``) and return the JSON object it
    printed on its last line; a failure stops the benchmark with ``what`` and the child's last
    line of stderr."""
    import subprocess

    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"error: {what} failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_json(path: str | Path, doc: dict[str, Any]) -> Path:
    """Write a result JSON (indented, atomically, numbers of numpy/torch made plain)."""
    from chainrule import outputs

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    outputs.write_text(path, json.dumps(doc, indent=2, default=float) + "\n")
    return path


def with_options(model, **changes: Any):
    """The same trained weights under a config with ``changes`` (options that do not change the
    parameters: an ensemble's size, a default ordering), in eval mode."""
    import dataclasses

    config = dataclasses.replace(model.config, **changes)
    out = type(model)(model.event_shape, model.levels, config)
    out.load_state_dict(model.state_dict())
    return out.eval()


def load_splits(name: str = "binarized-mnist", data_dir: str | None = None):
    """A data set through the library's loader (sha256-checked files; one-line errors)."""
    from chainrule.data import load_dataset

    try:
        return load_dataset(name, data_dir=data_dir)
    except Exception as e:  # the data is absent: say so in one line, as the CLI does
        raise SystemExit(f"error: {e} (give --data-dir or set $CHAINRULE_DATA)") from None


def binarized_mnist(data_dir: str | None = None, dtype=None) -> dict[str, torch.Tensor]:
    """The fixed binarized MNIST, ``{"train", "valid", "test"}`` tensors ``(N, 1, 28, 28)``
    (uint8 levels, or ``dtype`` when given)."""
    s = load_splits("binarized-mnist", data_dir)
    out = {k: s.split(k) for k in ("train", "valid", "test")}
    return {k: v.to(dtype) for k, v in out.items()} if dtype is not None else out
