"""Several processes, one training run: ``torch.distributed`` glue for the trainer.

``torchrun --nproc_per_node=N -m chainrule train ...`` starts N copies of the same command; each
reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR`` / ``MASTER_PORT``) from its
environment. :func:`setup` joins them into one process group: backend ``nccl`` when the
processes train on CUDA (process ``LOCAL_RANK`` on GPU ``LOCAL_RANK``), ``gloo`` on CPU.

How the work is split (see :mod:`chainrule.training.trainer`):

* The data order of epoch ``e`` is one permutation seeded by ``(seed, e)``, the same in every
  process. Global batch ``b`` is the slice ``order[b*B:(b+1)*B]`` (``B = --batch-size``, the
  *global* batch), and process ``r`` takes every ``N``-th image of it, ``[r::N]``: the same
  deterministic sharding as ``DistributedSampler``, but fixed per global batch, so that N
  processes take exactly the optimisation steps that one process takes with the same
  ``--batch-size`` (the per-process batch is ``B / N``).
* Each process computes the *sum* of its images' NLL scaled by ``N / |global batch|``;
  DistributedDataParallel averages gradients over processes, which gives the gradient of the
  global batch's mean NLL, also when the last batch does not split evenly.
* Validation and test NLL: each process scores ``images[r::N]`` and the sums are all-reduced.
* Only rank 0 writes files, logs and shows the progress bar. Every decision that changes the
  control flow (early stop, time budget, a non-finite loss, a failed folder check) is agreed
  by a collective so that no process waits forever for the others.

Known limits: ``--resume`` reads the run folder in every process, so on several hosts the run
folder must be on a shared file system (or copied to each host). Results equal one-process
training up to floating-point summation order (not bit for bit). For a real-valued model
(RNADE) the training batches get the same dequantization noise as in one process, but the
validation/test noise is drawn per shard, so its reported NLL differs from one process's by
noise (not by bias).
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    """Where this process stands in the group (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    #: True inside a process group (also of one process, under ``torchrun --nproc_per_node=1``)
    group: bool = False

    @property
    def enabled(self) -> bool:
        return self.group

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when not started by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError(f"WORLD_SIZE must be an int, got {os.environ['WORLD_SIZE']!r}") from None


def env_rank() -> int:
    """``RANK`` from the environment (0 when not started by torchrun)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        raise ValueError(f"RANK must be an int, got {os.environ['RANK']!r}") from None


def setup(device: torch.device) -> Dist:
    """Join the process group that torchrun's environment describes (or stay alone).

    Args:
        device: where this process trains; ``cuda`` selects nccl and GPU ``LOCAL_RANK``.

    Returns:
        this process's :class:`Dist`.
    """
    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return Dist(dist.get_rank(), dist.get_world_size(), local, group=True)
    world = env_world_size()
    launched = all(v in os.environ for v in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"))
    if world <= 1 and not launched:  # a plain process (torchrun with one process does join)
        return Dist()
    if not dist.is_available():
        raise ValueError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise ValueError(
                f"WORLD_SIZE={world} but {var} is not set: start the run with torchrun"
            )
    rank, local_rank = env_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, rank=rank, world_size=world)
    # the group lives as long as the process: a second train() call reuses it (joining a new
    # group through torchrun's store again, in the same process, is not reliable)
    atexit.register(_destroy)
    return Dist(rank, world, local_rank, group=True)


def _destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def process_device(device: torch.device) -> torch.device:
    """On CUDA under torchrun: this process's own GPU, ``cuda:LOCAL_RANK``."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def all_sum(d: Dist, values: list[float], device: torch.device) -> list[float]:
    """Sum a few float64 numbers over all processes (identity when alone)."""
    if not d.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_sum_with(
    d: Dist, value: torch.Tensor, values: list[float], device: torch.device
) -> list[float]:
    """``[value, *values]`` summed over all processes and read back with one host
    synchronisation (the training step's only one); ``value`` is a 0-dim tensor that may still
    be computed on the device."""
    if not d.enabled:
        return [value.item(), *values]
    t = torch.empty(1 + len(values), dtype=torch.float64, device=device)
    t[0] = value  # a copy on the device, and fills from host numbers: no synchronisation
    for i, v in enumerate(values):
        t[i + 1] = v
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def agree(d: Dist, flag: bool, device: torch.device) -> bool:
    """True in every process when ``flag`` is True in any process."""
    if not d.enabled:
        return flag
    return all_sum(d, [1.0 if flag else 0.0], device)[0] > 0


def broadcast_flag(d: Dist, flag: bool, device: torch.device) -> bool:
    """Rank 0's ``flag`` in every process."""
    if not d.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return bool(t.item() > 0)


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()
