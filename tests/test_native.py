"""The compiled NADE kernel (chainrule.native): it builds here, it equals the paper's loop in
float64 at sizes that use several tiles and threads, and where it cannot be built (no compiler, a
failing compiler, CHAINRULE_NATIVE=0) NADE says why once and runs the PyTorch path, or stops
with one clear error when the kernel was required.

The equality of every NADE path (native among them) with the per-dimension oracle on tiny
shapes, normalization and the samplers' bit-for-bit equality are in tests/test_nade.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import chainrule
from chainrule import native
from chainrule.models.nade import NativeBinaryNADE, SparseBinaryNADE

from .conftest import randomize, run_cli
from .oracles.nade import nade_log_prob


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty cache folder and no memory of an earlier load; restored afterwards."""
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(native, "_why", {})
    monkeypatch.setenv("CHAINRULE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "native"


def test_the_kernel_builds_on_this_machine():
    ext = native.nade()
    assert ext is not None, native.why_not("nade")
    assert {"forward", "backward", "sample"} <= set(dir(ext))


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
@pytest.mark.parametrize("threads", [1, 2])
def test_forward_and_backward_equal_the_loop_over_many_tiles(activation, threads):
    # 37 rows: several tiles of 8 and a partial one, split between the threads
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(3)
        b, d, h = 37, 29, 13
        x = (torch.rand(b, d, generator=g) < 0.3).double()
        x[0] = 0  # a row without ones (one segment)
        x[1] = 1  # a row of ones (a segment per step)
        w, c, v = (torch.randn(*s, generator=g).requires_grad_() for s in ((d, h), (h,), (d, h)))
        gout = torch.randn(b, d, generator=g)
        outs, grads = [], []
        for fn in (SparseBinaryNADE, NativeBinaryNADE):
            out = fn.apply(x, w, c, v, activation)
            outs.append(out)
            grads.append(torch.autograd.grad(out, (w, c, v), gout))
        torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-10)
        for a, ref in zip(grads[1], grads[0], strict=True):
            torch.testing.assert_close(a, ref, rtol=0, atol=1e-10)
            assert ref.abs().sum() > 0
    finally:
        torch.set_num_threads(old)


def test_native_log_prob_equals_the_oracle_on_a_real_size_in_float64():
    model = randomize(chainrule.build("nade", (1, 8, 8), 2, hidden=20).double(), scale=0.3)
    x = (torch.rand(50, 1, 8, 8, generator=torch.Generator().manual_seed(1)) < 0.2).double()
    torch.testing.assert_close(
        model._log_prob(x, "native"), nade_log_prob(model, x), atol=1e-10, rtol=0
    )


def test_native_sampler_and_completion_equal_the_pytorch_decoder():
    model = randomize(chainrule.build("nade", (1, 6, 6), 2, hidden=9, ordering="random:5"))
    model = model.double()
    mask = torch.zeros(40, 1, 6, 6, dtype=torch.bool)
    mask[:, :, :3] = True  # top half given (not a prefix of this ordering: a warning)
    given = (torch.rand(40, 1, 6, 6, generator=torch.Generator().manual_seed(2)) < 0.5).double()
    with pytest.warns(UserWarning, match="prefix"):
        fused = model.sample(40, given=given, mask=mask, generator=torch.Generator().manual_seed(4))
    model.config.impl = "sparse"
    with pytest.warns(UserWarning, match="prefix"):
        loop = model.sample(40, given=given, mask=mask, generator=torch.Generator().manual_seed(4))
    assert fused.dtype == loop.dtype == torch.float64
    assert torch.equal(fused, loop)
    assert torch.equal(fused[mask], given[mask])
    assert 0 < fused[~mask].mean() < 1


@pytest.mark.parametrize("ensemble", [1, 3])
def test_the_sampler_really_uses_the_kernel(monkeypatch, ensemble):
    # an ensemble: each ordering's rows in one call (the mixture of decoders is fused too)
    model = chainrule.build("nade", (1, 3, 3), 2, hidden=4, ensemble=ensemble)
    model = randomize(model.double())
    calls = []
    real = native.nade()

    class Spy:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(real, name)

    monkeypatch.setattr(native, "nade", lambda: Spy())
    model.sample(30, generator=torch.Generator().manual_seed(0))
    model.log_prob(torch.ones(2, 1, 3, 3))
    assert calls.count("sample") == ensemble and "forward" in calls  # 30 images: every part


def test_off_switch_gives_the_pytorch_path(fresh, monkeypatch):
    monkeypatch.setenv("CHAINRULE_NATIVE", "0")
    assert native.nade() is None
    model = randomize(chainrule.build("nade", (1, 2, 3), 2, hidden=4).double())
    assert model._impl(torch.zeros(1, 6)) == "sparse"
    assert not model.uses_native()
    assert not fresh.exists()  # nothing built


def test_no_compiler_warns_once_and_falls_back(fresh, monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.warns(UserWarning, match="native kernels are unavailable.*no C\\+\\+ compiler"):
        assert native.nade() is None
    assert native.nade() is None  # remembered: no second warning, no second try
    model = randomize(chainrule.build("nade", (1, 2, 3), 2, hidden=4).double())
    x = torch.randint(0, 2, (3, 1, 2, 3)).double()
    torch.testing.assert_close(model.log_prob(x), nade_log_prob(model, x), atol=1e-10, rtol=0)
    model.config.impl = "native"  # asked for by name: a clear error
    with pytest.raises(RuntimeError, match="impl='native' but the compiled NADE kernel"):
        model.log_prob(x)


def test_required_but_unbuildable_is_one_clear_error(fresh, monkeypatch):
    monkeypatch.setenv("CHAINRULE_NATIVE", "1")
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.raises(native.NativeUnavailable, match="CHAINRULE_NATIVE=1"):
        native.nade()


def test_a_failing_compiler_leaves_no_file_behind(fresh, monkeypatch):
    monkeypatch.setenv("CXX", "false")  # exists, exits 1: the build itself fails
    with pytest.warns(UserWarning, match="build failed"):
        assert native.nade() is None
    assert list(fresh.iterdir()) == []  # no library, no partial file, no lock


def test_a_user_command_without_a_compiler_trains_and_says_why_on_one_line(tmp_path):
    # `chainrule train` in a fresh process, an empty cache and a broken compiler: the run ends
    # normally on the PyTorch path, and stderr names the reason once, with no traceback
    env = {
        **os.environ,
        "CHAINRULE_CACHE": str(tmp_path / "cache"),
        "CXX": "/nonexistent/c++",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("CHAINRULE_NATIVE", None)
    cmd = [sys.executable, "-m", "chainrule", "train", "--model", "nade", "--data", "digits"]
    cmd += ["--max-train", "100", "--epochs", "1", "--out", str(tmp_path / "run"), "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    lines = [ln for ln in done.stderr.splitlines() if "native kernels are unavailable" in ln]
    assert len(lines) == 1 and "no C++ compiler" in lines[0]
    assert json.loads((tmp_path / "run" / "result.json").read_text())["native_kernels"] is False


def test_a_run_records_and_says_that_the_kernels_ran(tmp_path, capsys):
    code, out, err = run_cli(
        capsys, "train", "--model", "nade", "--data", "digits", "--max-train", "100",
        "--epochs", "1", "--out", tmp_path / "run",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "result.json").read_text())["native_kernels"] is True
    assert "compiled kernels" in out


def test_disabled_block_runs_the_pytorch_path_and_restores():
    model = randomize(chainrule.build("nade", (1, 2, 3), 2, hidden=4).double())
    x = torch.zeros(1, 6)
    with native.disabled():
        assert model._impl(x) == "sparse" and not model.uses_native()
    assert model._impl(x) == "native"


def test_a_library_that_does_not_load_is_removed_and_built_again(fresh, monkeypatch):
    # a truncated or foreign file where the library should be: it is not trusted; with no
    # compiler to rebuild it, the PyTorch path runs and the bad file is gone
    name, path = native.library_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a shared library")
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
        assert native.nade() is None
    assert not path.exists()


def test_the_build_command_reports_each_kernel(tmp_path):
    # `python -m chainrule.native` (make install runs it): the default cache holds the built
    # kernels, so it only loads them; with no compiler and an empty cache, exit 1 and the reason
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("CHAINRULE_NATIVE", None)
    ok = subprocess.run(
        [sys.executable, "-m", "chainrule.native"], capture_output=True, text=True, env=env
    )
    assert ok.returncode == 0, ok.stderr
    assert [ln.split(":")[0] for ln in ok.stdout.splitlines()] == list(native.STEMS)
    env.update(CHAINRULE_CACHE=str(tmp_path), CXX="/nonexistent/c++")
    bad = subprocess.run(
        [sys.executable, "-m", "chainrule.native"], capture_output=True, text=True, env=env
    )
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stdout.count("not used (no C++ compiler") == len(native.STEMS)
