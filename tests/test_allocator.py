"""chainrule.allocator: with freed memory kept, a step's tensors freed and allocated again reuse
the same pages (no page fault on their first writes), where glibc's defaults hand them back to
the system (a page fault for every page); the off switch; the trainer and the commands set it.

Each case runs in a fresh process: glibc's thresholds cannot be put back once set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from chainrule import allocator

from .conftest import run_cli

pytestmark = pytest.mark.skipif(
    allocator._libc() is None, reason="glibc only (other C libraries are left as they are)"
)

PROBE = """
import json, resource, sys
from chainrule import allocator
kept = allocator.keep_freed_memory() if sys.argv[1] == "keep" else False
import torch
torch.set_num_threads(1)  # no OpenMP threads, whose own allocations would move blocks around
faults = []
for _ in range(6):  # a step's tensors: 12 of 8 MiB and one of 31 MiB, allocated, written, freed
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ts = [torch.empty(2 << 20) for _ in range(12)] + [torch.empty(31 << 18)]
    for t in ts:
        t.fill_(1.0)  # the first write: a page fault for every fresh page
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    del ts, t
print(json.dumps({"kept": kept, "faults": faults, "state": allocator.freed_memory_kept()}))
"""
PAGES = (127 << 20) // os.sysconf("SC_PAGE_SIZE")  # the pages of one step's tensors


def probe(mode: str, **env) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        env={**{k: v for k, v in os.environ.items() if k != "CHAINRULE_KEEP_MEMORY"}, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_memory_is_reused_without_page_faults():
    default = probe("default")
    assert not default["kept"] and not default["state"]
    # glibc's defaults: the heap is trimmed when the step's tensors are freed, so the next step
    # writes fresh pages (until glibc's moving thresholds happen to settle: not asserted)
    assert default["faults"][1] > PAGES // 2, default
    kept = probe("keep")
    assert kept["kept"] and kept["state"]
    # kept: the first step faults its pages in, the steps after the second reuse them
    assert kept["faults"][0] > PAGES // 2, kept
    assert max(kept["faults"][2:]) < PAGES // 20, kept
    assert sum(kept["faults"][1:]) < sum(default["faults"][1:]) / 2


def test_the_off_switch_leaves_glibc_as_it_is():
    off = probe("keep", CHAINRULE_KEEP_MEMORY="0")
    assert not off["kept"] and not off["state"]
    assert off["faults"][1] > PAGES // 2, off


def test_a_training_run_keeps_freed_memory_and_records_it(tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = run_cli(
        capsys, "train", "--model", "independent", "--epochs", "1", "--out", run, "--quiet"
    )
    assert code == 0, err
    result = json.loads((run / "result.json").read_text())
    assert result["freed_memory_kept"] is True
    assert allocator.freed_memory_kept()
