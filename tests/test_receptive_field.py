"""Receptive fields measured by gradients through the real models, on 8 x 8 images: the Row
LSTM misses earlier pixels (a triangle above the pixel), the Diagonal BiLSTM sees every
previous pixel, and no model sees a later one."""

from __future__ import annotations

import pytest
import torch

import chainrule
from chainrule.receptive_field import context_mask, receptive_field, save_receptive_field_png

from .conftest import tiny

# 3 x 3 first layer and 2 recurrent layers: the 7 x 7 paper input layer would hide the
# Row LSTM's triangle on an image as small as 8 x 8
OPTS = {"hidden": 4, "layers": 2, "first_kernel": 3}


def earlier_than(shape, pixel, channel):
    c, h, w = shape
    cc, hh, ww = torch.meshgrid(torch.arange(c), torch.arange(h), torch.arange(w), indexing="ij")
    step = (hh * w + ww) * c + cc
    return step < (pixel[0] * w + pixel[1]) * c + channel


def row_lstm_context(h, w, layers, kernel, first_kernel, pixel) -> set[tuple[int, int]]:
    """The pixels a one-channel Row LSTM stack's output at ``pixel`` depends on, from the
    architecture alone: dependency sets propagated through the mask-A ``first_kernel`` input
    convolution, then per layer the masked ``1 x kernel`` input-to-state convolution (the pixel
    and those to its left), the ``1 x kernel`` state-to-state convolution of the row above and
    the cell state of the pixel above, and the residual sum (1 x 1 convolutions keep sets)."""
    p0, p = first_kernel // 2, kernel // 2

    def inside(r, c):
        return 0 <= r < h and 0 <= c < w

    cells = [(r, c) for r in range(h) for c in range(w)]
    s = {  # mask A: the rows above within the kernel and the same row strictly to the left
        (r, c): {
            (r + dr, c + dc)
            for dr in range(-p0, 1)
            for dc in range(-p0, p0 + 1)
            if (dr < 0 or dc < 0) and inside(r + dr, c + dc)
        }
        for r, c in cells
    }
    for _ in range(layers):
        state: dict[tuple[int, int], set] = {}
        for r, c in cells:
            deps = set().union(*(s[r, c + dc] for dc in range(-p, 1) if inside(r, c + dc)))
            if r > 0:  # h of the row above through the 1 x k kernel, and the cell state above
                deps |= set().union(
                    *(state[r - 1, c + dc] for dc in range(-p, p + 1) if inside(r - 1, c + dc))
                )
            state[r, c] = deps  # (h, c) of the pixel: both functions of the same gates
        s = {k: s[k] | state[k] for k in cells}
    return s[pixel]


@pytest.mark.parametrize("name", ["pixelcnn", "row-lstm", "diagonal-bilstm"])
@pytest.mark.parametrize("shape,channel", [((1, 8, 8), 0), ((3, 8, 8), 1)])
def test_no_model_sees_the_future(name, shape, channel):
    model = tiny(name, shape, 2, **OPTS)
    for pixel in [(7, 7), (4, 3), (0, 0)]:
        field = receptive_field(model, pixel, channel)
        assert field.shape == shape and (field >= 0).all()
        assert (field[~earlier_than(shape, pixel, channel)] == 0).all()


def test_row_lstm_misses_pixels_the_diagonal_bilstm_sees():
    shape, pixel = (1, 8, 8), (7, 7)
    earlier = earlier_than(shape, pixel, 0)
    row = context_mask(receptive_field(tiny("row-lstm", shape, 2, **OPTS), pixel))
    diag = context_mask(receptive_field(tiny("diagonal-bilstm", shape, 2, **OPTS), pixel))
    assert diag[earlier].all(), "the Diagonal BiLSTM must see every previous pixel"
    missed = earlier & ~row
    assert missed.any(), "the Row LSTM should miss some earlier pixels"
    # the misses are to the side, low down: the far left of the pixel's own row and of the
    # rows just above it, while the rows near the top are inside the widening triangle
    assert missed[0, 7, 0] and missed[0, 6, 0] and not missed[0, :2].any()
    assert row[0, 6, 6:].all() and row[0, 7, 4:7].all()  # the near neighbours are seen
    # and the gradients see exactly the context that the architecture defines
    expected = torch.zeros(shape, dtype=torch.bool)
    for r, c in row_lstm_context(8, 8, OPTS["layers"], 3, OPTS["first_kernel"], pixel):
        expected[0, r, c] = True
    assert torch.equal(row, expected)


@pytest.mark.parametrize("first_kernel", [3, 7])
def test_diagonal_bilstm_sees_all_previous_dimensions_in_colour(first_kernel):
    shape = (3, 8, 8)
    model = tiny("diagonal-bilstm", shape, 3, **{**OPTS, "first_kernel": first_kernel})
    for pixel in [(5, 2), (7, 0), (1, 7)]:
        for channel in range(3):
            mask = context_mask(receptive_field(model, pixel, channel))
            assert torch.equal(mask, earlier_than(shape, pixel, channel)), (pixel, channel)


@pytest.mark.parametrize("layers", [1, 3])
def test_paper_diagonal_bilstm_has_a_blind_spot(layers):
    """The layer exactly as the paper writes it (full_context=False) never sees the last pixel
    of the row above from the left part of a row, at any depth: mask A keeps a pixel's own
    value out of the stream at that pixel, and the right-to-left state is shifted down."""
    shape = (1, 8, 8)
    opts = {**OPTS, "layers": layers, "first_kernel": 7, "full_context": False}
    model = tiny("diagonal-bilstm", shape, 2, **opts)
    mask = context_mask(receptive_field(model, (5, 1)))
    earlier = earlier_than(shape, (5, 1), 0)
    assert torch.equal(
        earlier & ~mask,
        torch.zeros_like(mask).index_put_(
            (torch.tensor([0]), torch.tensor([4]), torch.tensor([7])), torch.tensor(True)
        ),
    )


def test_generic_models_and_errors(tmp_path):
    model = tiny("fvsbn", (1, 3, 3))
    field = receptive_field(model, (1, 1))
    assert torch.equal(context_mask(field), earlier_than((1, 3, 3), (1, 1), 0))
    with pytest.raises(ValueError, match="pixel must lie"):
        receptive_field(model, (3, 0))
    with pytest.raises(ValueError, match="channel must be"):
        receptive_field(model, (0, 0), channel=1)
    table = chainrule.build("table", (1, 2, 2), 2)
    with pytest.raises(ValueError, match="no gradient"):
        receptive_field(table, (1, 1))


def test_png_is_written(tmp_path):
    from PIL import Image

    model = tiny("row-lstm", (3, 8, 8), 2, **OPTS)
    field = receptive_field(model, (7, 7), 2)
    path = save_receptive_field_png(field, tmp_path / "rf.png", (7, 7), 2, scale=4)
    im = Image.open(path)
    assert im.size == ((3 * 8 + 2) * 4, 8 * 4)
    px = im.load()
    assert px[(2 * 9 + 7) * 4 + 1, 7 * 4 + 1] == (220, 30, 30)  # the target, red


def test_cli_receptive_field(tmp_path, capsys):
    from chainrule.cli import main

    out = tmp_path / "rf.png"
    args = ["receptive-field", "--model", "row-lstm", "--shape", "1x8x8", "--layers", "2"]
    assert main([*args, "--option", "first_kernel=3", "--pixel", "7,7", "--out", str(out)]) == 0
    assert out.is_file()
    seen = len(row_lstm_context(8, 8, 2, 3, 3, (7, 7)))  # derived from the architecture
    assert f"influenced by {seen} of the {7 * 8 + 7} earlier dimensions" in capsys.readouterr().out
    assert main(["receptive-field", "--model", "row-lstm", "--pixel", "7"]) == 1
    assert "ROW,COL" in capsys.readouterr().err
