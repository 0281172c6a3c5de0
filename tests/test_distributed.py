"""Several processes (gloo on CPU) take the same optimisation steps as one process.

`batch_size` is the global batch: N processes split each global batch of the seeded per-epoch
permutation ([rank::N]), DistributedDataParallel averages their gradients of
`N / |batch| * sum(NLL)`, and the validation/test sums are all-reduced. So the weights after
training on 2 processes equal those of 1 process up to summation order (float64 here).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import chainrule
from chainrule.cli import main

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with gloo is not available in this PyTorch build",
)

# 161 training images in global batches of 32: the last batch holds 1 image, so process 1
# gets an empty shard there (it takes part with weight 0)
ARGS = [
    "--model",
    "fvsbn",
    "--data",
    "digits",
    "--max-train",
    "161",
    "--batch-size",
    "32",
    "--lr",
    "0.02",
    "--patience",
    "0",
    "--dtype",
    "float64",
    "--quiet",
]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _torchrun(argv: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "chainrule",
        *argv,
    ]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)


def _cli_float32(argv: list[str]) -> int:
    """The CLI in this process with float32 as default dtype, like a fresh `chainrule` process
    (the initial weights are drawn in float32 there, then cast by --dtype float64)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        return main(argv)
    finally:
        torch.set_default_dtype(old)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("dist") / "single"
    assert _cli_float32(["train", *ARGS, "--epochs", "2", "--out", str(run)]) == 0
    return run


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same(a: Path, b: Path, atol: float = 1e-12) -> None:
    wa, wb = chainrule.load(a).state_dict(), chainrule.load(b).state_dict()
    assert wa.keys() == wb.keys()
    for k in wa:
        assert wa[k].dtype == torch.float64
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=atol)
    sa, sb = load_file(a / "state.safetensors"), load_file(b / "state.safetensors")
    for k in sa:  # the last weights and Adam's moments, not only the best model
        if k.startswith(("model.", "optim.")):
            torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=atol)
    ra, rb = _rows(a), _rows(b)
    assert [r["epoch"] for r in ra] == [r["epoch"] for r in rb]
    for x, y in zip(ra, rb, strict=True):
        for key in ("train_nll", "valid_nll"):  # train: global mean; valid: reduced over ranks
            assert abs(x[key] - y[key]) < 1e-9, (key, x, y)
    res_a, res_b = (json.loads((p / "result.json").read_text()) for p in (a, b))
    assert abs(res_a["test_nll_nats"] - res_b["test_nll_nats"]) < 1e-9
    assert abs(res_a["test_nll_stderr"] - res_b["test_nll_stderr"]) < 1e-9


def test_torchrun_two_gloo_processes_equal_one_process(one_process, tmp_path):
    run = tmp_path / "ddp"
    loud = [a for a in ARGS if a != "--quiet"]  # the epoch lines: from rank 0 only
    p = _torchrun(["train", *loud, "--epochs", "2", "--out", str(run)])
    assert p.returncode == 0, p.stderr[-3000:]
    _assert_same(run, one_process)
    # only rank 0 reports and writes: one result line, one set of files, no temp files
    assert p.stdout.count("test NLL:") == 1 and "x 2 processes" in p.stdout
    assert p.stderr.count("epoch   1") == 1
    assert json.loads((run / "result.json").read_text())["processes"] == 2
    assert json.loads((run / "config.json").read_text())["processes"] == 2
    assert not list(run.glob(".*.tmp"))
    # and the weights really moved: training is not vacuous
    init = chainrule.build("fvsbn", event_shape=(1, 8, 8), levels=2)
    assert (chainrule.load(run).weight - init.weight).abs().max() > 0.05


def test_resume_on_another_number_of_processes(one_process, tmp_path, capsys):
    """One process trains epoch 1; two processes resume it: the same run as one process."""
    run = tmp_path / "mixed"
    assert _cli_float32(["train", *ARGS, "--epochs", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    p = _torchrun(["train", "--resume", str(run), "--epochs", "2"])
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resuming" in p.stderr
    _assert_same(run, one_process)


WORKER = textwrap.dedent("""
    import sys, torch
    import chainrule
    from chainrule.data import load_dataset
    from chainrule.train import TrainConfig, train
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    model = chainrule.build("pixelcnn", event_shape=(1, 8, 8), levels=2, hidden=4, layers=2)
    cfg = TrainConfig(epochs=1, batch_size=24, lr=0.01, max_train=60, progress=False,
                      num_samples=2, eval_batch_size=64, patience=0)
    result = train(model, load_dataset("digits"), cfg, sys.argv[1])
    # a second train() in the same processes reuses the process group
    second = chainrule.build("fvsbn", event_shape=(1, 8, 8), levels=2)
    r2 = train(second, load_dataset("digits"), cfg)
    print("valid", r2["best_valid_nll"], result["best_valid_nll"])
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_python_api_under_a_torchrun_environment_equals_one_process(tmp_path):
    """train() itself joins the group from RANK/WORLD_SIZE/MASTER_* (what torchrun sets), here
    for a convolutional model with buffers (masks); 60 images in batches of 24 (24, 24, 12);
    then a second train() call in the same processes."""
    if "pixelcnn" not in chainrule.available_models():
        pytest.skip("pixelcnn is not registered")
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = {
            **_env(),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", WORKER, str(tmp_path / "ddp")],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    single = subprocess.run(
        [sys.executable, "-c", WORKER, str(tmp_path / "single")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    # every rank got the same reduced validation NLL, equal to one process's
    for i in (-1, -2):  # pixelcnn's, then the second model's
        valid = [float(o.split()[i]) for o, _ in outs] + [float(single.stdout.split()[i])]
        assert max(valid) - min(valid) < 1e-9, valid
    a, b = (
        load_file(tmp_path / "ddp" / "state.safetensors"),
        load_file(tmp_path / "single" / "state.safetensors"),
    )
    assert a.keys() == b.keys()
    for k in a:
        if k.startswith(("model.", "optim.")):
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-12)


# ---------------------------------------------------------------------- devices
def test_bf16_autocast_trains_in_bf16_and_keeps_float32_weights(tmp_path):
    from chainrule.data import load_dataset
    from chainrule.train import TrainConfig, train

    digits = load_dataset("digits")
    cfg = dict(
        epochs=1, batch_size=64, lr=0.02, max_train=256, progress=False, num_samples=2, patience=0
    )
    torch.manual_seed(0)
    init = chainrule.build("fvsbn", event_shape=(1, 8, 8), levels=2).float()
    runs = {}
    for bf16 in (False, True):
        model = chainrule.build("fvsbn", event_shape=(1, 8, 8), levels=2).float()
        model.load_state_dict(init.state_dict())
        runs[bf16] = (
            model,
            train(model, digits, TrainConfig(**cfg, bf16=bf16), tmp_path / f"bf16-{bf16}"),
        )
    model, result = runs[True]
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast, not a cast
    before = -init.log_prob(digits.test).mean().item()
    assert result["test_nll_nats"] < before - 3  # it learns
    # the forward really ran in bf16: not the float32 run's weights, but close to them
    diff = (runs[True][0].weight - runs[False][0].weight).abs().max().item()
    assert 0 < diff < 0.05, diff
    # the checkpoint is float32 and reports the same test NLL, evaluated in float32
    loaded = chainrule.load(tmp_path / "bf16-True", map_location="cpu")
    assert loaded.weight.dtype == torch.float32
    assert abs(-loaded.log_prob(digits.test).mean().item() - result["test_nll_nats"]) < 1e-4


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_a_gpu_is_one_clear_line(tmp_path, capsys):
    code = main(["train", "--model", "fvsbn", "--device", "cuda", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 1 and "no CUDA device is available" in err and "Traceback" not in err


def test_world_size_without_torchrun_is_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    code = main(["train", *ARGS, "--epochs", "1", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 1 and "MASTER_ADDR is not set: start the run with torchrun" in err
