"""Bad input everywhere: property-based tests (hypothesis) over every registered model and the
data loaders.

Each property has an *oracle* written independently of the code under test (what docs/contract.md
says a valid input is). For any generated input: if the oracle says it is valid, the call
succeeds and its output has the promised shape and values; otherwise the call raises
``ValueError`` with a one-line message, and never another exception type (no IndexError or
RuntimeError from deep inside a model, no silent garbage).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import chainrule
from chainrule.data import DataError, load_dataset

from .conftest import supports_levels, tiny

SETTINGS = settings(
    max_examples=15,
    deadline=None,
    derandomize=True,  # the same examples every run: a failure is reproducible, never flaky
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SHAPE = (1, 2, 2)
MODELS = chainrule.available_models()


def _levels_for(name: str) -> list:
    return [lv for lv in (2, 3, None) if supports_levels(name, lv)]


CASES = [(n, lv) for n in MODELS for lv in _levels_for(n)]
_cache: dict = {}


def _model(name: str, levels):
    if (name, levels) not in _cache:
        _cache[(name, levels)] = tiny(name, event_shape=SHAPE, levels=levels).eval()
    return _cache[(name, levels)]


# ---------------------------------------------------------------------- the oracle
INT_DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.int64]
FLOAT_DTYPES = [np.float32, np.float64]


def valid_images(a: np.ndarray, shape, levels) -> bool:
    """The input contract: (B, C, H, W), B >= 1, integer/bool/float dtype, finite, and whole numbers
    0..K-1 for a discrete model or values in [0, 1] for a real-valued one."""
    if a.dtype.kind not in "biuf":
        return False
    if a.ndim != 4 or tuple(a.shape[1:]) != tuple(shape) or a.shape[0] < 1:
        return False
    v = a.astype(np.float64)
    if not np.isfinite(v).all():
        return False
    if levels is None:
        return bool((v >= 0).all() and (v <= 1).all())
    return bool((v >= 0).all() and (v <= levels - 1).all() and (v == np.round(v)).all())


def _one_line_value_error(excinfo) -> None:
    msg = str(excinfo.value)
    assert isinstance(excinfo.value, ValueError)
    assert msg and "\n" not in msg and len(msg) > 15, msg


@st.composite
def image_batches(draw, levels):
    """Mostly-valid batches with one random corruption (or none)."""
    kind = draw(st.sampled_from(["int", "float", "bool"] if levels != 3 else ["int", "float"]))
    b = draw(st.integers(1, 3))
    shape = (b, *SHAPE)
    if levels is None:
        a = draw(hnp.arrays(np.float64, shape, elements=st.floats(0, 1)))
        if kind == "int":
            a = np.round(a).astype(draw(st.sampled_from(INT_DTYPES)))
        elif kind == "bool":
            a = a > 0.5
    else:
        a = draw(hnp.arrays(np.int64, shape, elements=st.integers(0, levels - 1)))
        if kind == "int":
            a = a.astype(draw(st.sampled_from(INT_DTYPES)))
        elif kind == "float":
            a = a.astype(draw(st.sampled_from(FLOAT_DTYPES)))
        else:
            a = a.astype(bool)
    corruption = draw(
        st.sampled_from(
            [
                "none",
                "none",
                "shape",
                "ndim",
                "empty",
                "nan",
                "inf",
                "range",
                "fraction",
                "complex",
                "transpose",
            ]
        )
    )
    if corruption == "shape":
        a = np.zeros((b, *draw(st.tuples(*[st.integers(0, 3)] * 3))), dtype=a.dtype)
    elif corruption == "ndim":
        a = a.reshape(
            draw(
                st.sampled_from([(-1,), (b, -1), (b, 1, 1, 2, 2), (1, 2, 2)][: 4 if b == 1 else 3])
            )
        )
    elif corruption == "empty":
        a = a[:0]
    elif corruption in ("nan", "inf", "range", "fraction"):
        a = a.astype(np.float64)
        idx = tuple(draw(st.integers(0, s - 1)) for s in a.shape)
        bad = {
            "nan": math.nan,
            "inf": draw(st.sampled_from([math.inf, -math.inf])),
            "range": draw(st.sampled_from([-1.0, -0.01, (levels or 1) + 0.0, 300.0, 1e30])),
            "fraction": draw(st.floats(0.01, 0.99)),
        }[corruption]
        a[idx] = bad
    elif corruption == "complex":
        a = a.astype(np.complex64)
    elif corruption == "transpose" and SHAPE[0] != SHAPE[1]:
        a = a.transpose(0, 2, 3, 1)
    return a


# ---------------------------------------------------------------------- models
@pytest.mark.parametrize("name,levels", CASES)
@SETTINGS
@given(data=st.data())
def test_log_prob_and_features_accept_exactly_the_valid_images(name, levels, data):
    model = _model(name, levels)
    a = data.draw(image_batches(levels))
    ok = valid_images(a, SHAPE, levels)
    for as_tensor in (True, False):
        x = torch.from_numpy(a.copy()) if as_tensor else a
        if ok:
            lp = model.log_prob(x)
            assert (
                lp.shape == (a.shape[0],)
                and torch.isfinite(lp).all()
                and (lp <= 1e-9).all() | (levels is None)
            )
            f = model.features(x)
            assert f.dim() == 2 and f.shape[0] == a.shape[0] and torch.isfinite(f).all()
            c = model.conditional_log_probs(x)
            torch.testing.assert_close(c.flatten(1).sum(1), lp)
        else:
            for fn in (model.log_prob, model.features, model.conditional_log_probs):
                with pytest.raises(ValueError) as e:
                    fn(x)
                _one_line_value_error(e)


@pytest.mark.parametrize("name,levels", CASES)
@SETTINGS
@given(n=st.one_of(st.integers(-3, 3), st.sampled_from([0.5, 2.0, True, False, "2", None])))
def test_sample_n_is_checked(name, levels, n):
    model = _model(name, levels)
    valid = isinstance(n, int) and not isinstance(n, bool) and n >= 1
    if valid:
        x = model.sample(n, generator=torch.Generator().manual_seed(0))
        assert x.shape == (n, *SHAPE) and valid_images(x.numpy(), SHAPE, levels)
    else:
        with pytest.raises(ValueError) as e:
            model.sample(n)
        _one_line_value_error(e)


def _broadcastable(mask_shape, target) -> bool:
    if len(mask_shape) > len(target):
        return False
    return all(m in (1, t) for m, t in zip(mask_shape[::-1], target[::-1], strict=False))


@pytest.mark.parametrize("name,levels", CASES)
@SETTINGS
@given(data=st.data())
def test_completion_arguments_are_checked(name, levels, data):
    model = _model(name, levels)
    n = data.draw(st.integers(1, 3))
    given_ = data.draw(image_batches(levels))
    variant = data.draw(st.sampled_from(["as-is", "3d", "one"]))
    if variant == "3d" and given_.ndim == 4 and given_.shape[0] >= 1:
        given_ = given_[0]
    elif variant == "one" and given_.ndim == 4 and given_.shape[0] >= 1:
        given_ = given_[:1]
    mask_shape = data.draw(
        st.sampled_from(
            [SHAPE, (1, *SHAPE), (n, *SHAPE), (2, 2), (1, 2, 1), (3,), (4, 1, 2, 2), ()]
        )
    )
    mask_dtype = data.draw(st.sampled_from([np.bool_, np.bool_, np.uint8, np.float64]))
    mask = data.draw(hnp.arrays(mask_dtype, mask_shape, elements=st.sampled_from([0, 1])))
    # the oracle: given is images (a single one, one to repeat, or n), mask is boolean and broadcasts
    g4 = given_[None] if given_.ndim == 3 else given_
    if g4.ndim == 4 and g4.shape[0] == 1:
        g4 = np.repeat(g4, n, axis=0)
    ok = (
        valid_images(g4, SHAPE, levels)
        and g4.shape[0] == n
        and mask.dtype == np.bool_
        and _broadcastable(mask.shape, (n, *SHAPE))
    )
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # completions that are not a prefix warn; not the point here
        if ok:
            x = model.sample(
                n,
                given=torch.from_numpy(given_.copy()),
                mask=torch.from_numpy(mask.copy()),
                generator=torch.Generator().manual_seed(1),
            )
            assert x.shape == (n, *SHAPE) and valid_images(x.numpy(), SHAPE, levels)
            m = np.broadcast_to(mask, x.shape)
            np.testing.assert_allclose(x.numpy()[m], g4.astype(np.float64)[m], rtol=0, atol=1e-6)
        else:
            with pytest.raises(ValueError) as e:
                model.sample(
                    n,
                    given=torch.from_numpy(np.ascontiguousarray(given_)),
                    mask=torch.from_numpy(np.ascontiguousarray(mask)),
                )
            _one_line_value_error(e)


@pytest.mark.parametrize("name", MODELS)
@SETTINGS
@given(
    event_shape=st.one_of(
        st.tuples(st.integers(-1, 2), st.integers(-1, 3), st.integers(-1, 3)),
        st.lists(st.integers(1, 2), max_size=4).map(tuple),
        st.sampled_from(["1x2x2", "122", None, ("a", 2, 2), (1.5, 2, 2), (1, 2), [1, 2, 2, 1]]),
    ),
    levels=st.sampled_from([None, -1, 0, 1, 2, 3, 2.0, True, "2"]),
)
def test_build_checks_event_shape_and_levels(name, event_shape, levels):
    from chainrule.models import model_class

    supports = model_class(name).supports
    shape_ok = (
        isinstance(event_shape, tuple)
        and len(event_shape) == 3
        and all(isinstance(s, int) and s >= 1 for s in event_shape)
    )
    levels_ok = (levels is None and "real" in supports) or (
        isinstance(levels, int)
        and not isinstance(levels, bool)
        and levels >= 2
        and ("discrete" in supports or (levels == 2 and "binary" in supports))
    )
    try:
        model = chainrule.build(name, event_shape=event_shape, levels=levels)
    except ValueError as e:
        assert "\n" not in str(e)
        # a valid shape/levels may still be refused (a model's minimum size): then it says why
        assert (
            not (shape_ok and levels_ok)
            or "shape" in str(e)
            or "small" in str(e)
            or "least" in str(e)
        ), str(e)
        return
    assert shape_ok and levels_ok, (event_shape, levels)
    assert model.event_shape == event_shape and model.levels == levels


@pytest.mark.parametrize("levels", [None, "2"])
def test_table_refuses_bad_levels_with_a_value_error(levels):
    with pytest.raises(ValueError, match="levels|discrete"):
        chainrule.build("table", event_shape=(1, 1, 1), levels=levels)


@pytest.mark.parametrize("event_shape", [(1.5, 2, 2), "122"])
def test_build_refuses_non_integer_event_shapes(event_shape):
    with pytest.raises(ValueError, match="event_shape"):
        chainrule.build("fvsbn", event_shape=event_shape, levels=2)


# ---------------------------------------------------------------------- data loaders
def npz_arrays():
    dtypes = st.sampled_from([np.uint8, np.int16, np.int64, np.float32, np.float64, np.bool_])
    shapes = st.one_of(
        st.tuples(st.integers(0, 40), st.integers(1, 4), st.integers(1, 4)),  # (N, H, W)
        st.tuples(
            st.integers(0, 40), st.sampled_from([1, 3]), st.integers(1, 3), st.integers(1, 3)
        ),
        st.tuples(st.integers(0, 40)),  # (N,): not images
        st.tuples(
            st.integers(1, 5),
            st.integers(1, 2),
            st.integers(1, 2),
            st.integers(1, 2),
            st.integers(1, 2),
        ),
    )

    @st.composite
    def arrays(draw):
        dtype = draw(dtypes)
        shape = draw(shapes)
        if np.dtype(dtype).kind == "f":
            elems = st.one_of(
                st.integers(0, 255).map(float),
                st.floats(allow_nan=True, allow_infinity=True, width=32),
            )
        elif np.dtype(dtype).kind == "b":
            elems = st.booleans()
        else:
            info = np.iinfo(dtype)
            elems = st.integers(max(info.min, -5), min(info.max, 300))
        return draw(hnp.arrays(dtype, shape, elements=elems))

    return arrays()


def _npz_valid(x: np.ndarray) -> bool:
    """Definitely loadable: whole numbers 0..255 as images, enough of them to split 80/10/10."""
    if x.dtype.kind not in "buif" or x.ndim not in (3, 4) or len(x) < 10:
        return False
    v = x.astype(np.float64)
    return bool(
        np.isfinite(v).all() and (v == np.round(v)).all() and v.min() >= 0 and v.max() <= 255
    )


def _npz_invalid(x: np.ndarray) -> bool:
    """Definitely refused: not images, or values that are not levels."""
    if x.ndim not in (3, 4) or x.size == 0:
        return True
    v = x.astype(np.float64)
    return bool(
        not np.isfinite(v).all() or (v != np.round(v)).any() or v.min() < 0 or v.max() > 255
    )


@SETTINGS
@given(x=npz_arrays())
def test_npz_loader_accepts_valid_and_refuses_bad_arrays(tmp_path_factory, x):
    path = tmp_path_factory.mktemp("npz") / "d.npz"
    np.savez(path, x=x)
    try:
        s = load_dataset(f"npz:{path}")
    except DataError as e:
        assert "\n" not in str(e) and len(str(e)) > 15, str(e)
        assert not _npz_valid(x), f"refused a valid array: {e}"
        return
    assert not _npz_invalid(x), "accepted an invalid array"
    parts = (s.train, s.valid, s.test)
    assert all(p.dtype == torch.uint8 and p.dim() == 4 and len(p) >= 1 for p in parts)
    assert sum(len(p) for p in parts) == len(x)
    assert max(int(p.max()) for p in parts) < s.levels
    # the images are the given ones (as a multiset of flattened images)
    got = sorted(map(bytes, torch.cat(parts).flatten(1).numpy()))
    want = x.astype(np.float64).astype(np.uint8)
    want = want[:, None] if want.ndim == 3 else want
    if want.ndim == 4 and want.shape[-1] in (1, 3) and want.shape[1] not in (1, 3):
        want = want.transpose(0, 3, 1, 2)
    assert got == sorted(map(bytes, np.ascontiguousarray(want).reshape(len(x), -1)))


@SETTINGS
@given(
    name=st.one_of(
        st.text(max_size=20),
        st.sampled_from(
            [
                "digits:nope",
                "digits:levels=3",
                "mnist:levels=1",
                "mnist:levels=x",
                "cifar10:dynamic",
                "npz:",
                "folder:",
                "folder:/nonexistent",
                "npz:/nonexistent.npz",
                "binarized-mnist:binarize",
                ":",
                "DIGITS",
            ]
        ),
        st.builds(lambda k: f"digits:{k}", st.text(max_size=8)),
    )
)
def test_unknown_or_malformed_data_names_are_one_line_errors(name, tmp_path):
    assume(name.rstrip(":") not in ("digits", "digits:levels", "digits:binarize"))
    with pytest.raises(ValueError) as e:
        load_dataset(name, data_dir=tmp_path)
    _one_line_value_error(e)


@pytest.mark.parametrize("bad", [None, 3, b"digits", ["digits"]])
def test_data_name_of_the_wrong_type(bad):
    with pytest.raises(ValueError, match="non-empty string"):
        load_dataset(bad)


# ---------------------------------------------------------------------- every train option
@pytest.mark.parametrize(
    "flag,value,match",
    [
        ("--epochs", "-1", "epochs"),
        ("--batch-size", "0", "batch_size"),
        ("--lr", "0", "lr"),
        ("--lr", "nan", "lr"),
        ("--lr", "inf", "lr"),
        ("--seed", "-1", "seed"),
        ("--patience", "-2", "patience"),
        ("--max-train", "-5", "max_train"),
        ("--time-budget", "-1", "time_budget_min"),
        ("--grad-clip", "-1", "grad_clip"),
        ("--checkpoint-every", "-1", "checkpoint_every"),
        ("--checkpoint-minutes", "nan", "checkpoint_minutes"),
        ("--checkpoint-minutes", "-3", "checkpoint_minutes"),
    ],
)
def test_every_numeric_train_option_is_checked_before_training(
    flag, value, match, tmp_path, capsys
):
    from chainrule.cli import main

    with pytest.raises(SystemExit) as e:  # refused while the command line is read
        main(
            ["train", "--model", "fvsbn", "--data", "digits", flag, value]
            + ["--out", str(tmp_path / "r")]
        )
    err = capsys.readouterr().err
    assert e.value.code == 2 and flag in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1, err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--epochs", "x"),
        ("--device", "tpu"),
        ("--dtype", "float16"),
        ("--lr", "fast"),
        ("--budget-clock", "gpu"),
        ("--weight-decay", "much"),
    ],
)
def test_unparseable_train_options_are_usage_errors(flag, value, capsys):
    from chainrule.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert ("invalid" in err or "must be" in err) and err.count("\n") == 1
