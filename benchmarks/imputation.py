"""Imputation on fixed binarized MNIST: the exact log-likelihood of the hidden pixels given the
visible ones, a table no other library gives.

For each model and each mask, the test images' ``-log p(hidden | visible)`` in nats per hidden
pixel (the mean over images of the per-image NLL divided by the number of hidden pixels), with
its standard error:

* order-agnostic models (``made``, ``deep-nade``): exactly, for any mask, under the given-first
  ordering of each image's mask: ``log_prob(x, ordering=ordering_for(mask)) -
  log_prob_observed(x, mask)`` (:func:`chainrule.completion.conditional_log_likelihood`);
* a fixed-ordering model (``nade``): only where the visible pixels are a prefix of its ordering
  (the bottom half hidden, for raster order): the sum of the hidden pixels' conditionals;
  other masks are left blank (the model cannot give them exactly);
* independent pixels: the hidden pixels' own probabilities (exact for any mask: nothing
  depends on the visible pixels).

Masks (True = visible): ``bottom-half`` (the top 14 rows seen), ``box`` (the central 14 x 14
box hidden, ``box:7,7,14,14``) and ``random50`` (a random half of the pixels hidden:
10 random patterns drawn with ``--seed``, image ``i`` taking pattern ``i mod 10``).

Writes ``benchmarks/results/imputation.json`` (``--out``).

Example::

    python benchmarks/imputation.py --model made=runs/made-any-order \\
        --model deep-nade=runs/deep-nade-mnist --model nade=pretrained:nade-binarized-mnist \\
        --model independent=runs/independent-mnist --threads 2
    python benchmarks/imputation.py --model deep-nade-random=runs/deep-nade-mnist@random:1
"""

from __future__ import annotations

import argparse
import math
import time

import _common as common
import torch

#: random patterns of the random50 mask (each image one of them: an exact conditional costs
#: an order-agnostic model one batched pass per pattern, where a mask per image would cost one
#: pass per image)
PATTERNS = 10

MASKS = {
    "bottom-half": "the bottom 14 rows hidden (a prefix of raster order)",
    "box": "the central 14 x 14 box hidden (box:7,7,14,14)",
    "random50": "a random half of the pixels hidden: 10 random patterns (seeded), image i "
    "takes pattern i mod 10",
}


def visible_masks(name: str, n: int, event_shape, seed: int) -> torch.Tensor:
    """``(n, C, H, W)`` boolean, True where visible."""
    from chainrule.completion import occlusion_mask

    if name == "bottom-half":
        one = occlusion_mask("bottom-half", event_shape)
    elif name == "box":
        one = occlusion_mask("box:7,7,14,14", event_shape)
    elif name == "random50":  # patterns shared by 1 in 10 images: the models batch them
        d = math.prod(event_shape)
        g = torch.Generator().manual_seed(seed)
        keys = torch.rand(PATTERNS, d, generator=g)
        keep = keys.argsort(1) < d // 2  # exactly half of the pixels visible in each pattern
        return keep[torch.arange(n) % PATTERNS].reshape(n, *event_shape)
    else:
        raise ValueError(f"unknown mask {name!r}")
    return one.expand(n, *event_shape).clone()


def conditional_nll(model, x: torch.Tensor, mask: torch.Tensor, batch: int) -> torch.Tensor | None:
    """``(N,)`` float64 ``-log p(hidden | visible)`` per image, or None where the model cannot
    give it exactly (a fixed ordering and a mask that is not a prefix of it)."""
    from chainrule import sampling
    from chainrule.completion import conditional_log_likelihood
    from chainrule.models.anyorder import OrderAgnosticModel

    order_agnostic = isinstance(model, OrderAgnosticModel)
    if not order_agnostic and model.name != "independent":
        order = model.decoder_order(0) if hasattr(model, "decoder_order") else None
        if order is None or not sampling.is_prefix(mask.flatten(1), order):
            return None
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb, mb = x[i : i + batch], mask[i : i + batch]
            if order_agnostic:
                out.append(-conditional_log_likelihood(model, xb, mb).double())
            else:  # the hidden pixels' conditionals (exact: they come last / stand alone)
                lp = model.conditional_log_probs(xb)
                out.append(-torch.where(mb, 0.0, lp).flatten(1).sum(1).double())
    return torch.cat(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="LABEL=CHECKPOINT[@ORDERING]",
        help="a model to score: a label and a run folder or pretrained:NAME, optionally under "
        "another default ordering (order-agnostic models: e.g. @random:1) (repeatable)",
    )
    p.add_argument("--n", type=int, default=10000, help="test images (default: all 10,000)")
    p.add_argument("--masks", default=",".join(MASKS), help="comma-separated: " + ", ".join(MASKS))
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--seed", type=int, default=0, help="seed of the random masks")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=str(common.RESULTS / "imputation.json"))
    args = p.parse_args(argv)
    common.set_threads(args.threads)

    import chainrule

    test = common.binarized_mnist(args.data_dir, torch.float32)["test"][: args.n]
    doc = common.header(
        masks={m: MASKS[m] for m in args.masks.split(",")},
        n_images=len(test),
        unit="nats per hidden pixel: mean over images of -log p(hidden | visible) / hidden pixels",
        rows=[],
    )
    for spec in args.model:
        label, _, ckpt = spec.partition("=")
        ckpt, _, ordering = ckpt.partition("@")
        model = chainrule.load(ckpt).eval()
        if ordering:  # the same weights under another default ordering (and given-first ones)
            model = common.with_options(model, ordering=ordering)
        row = {"label": label, "checkpoint": ckpt, "model": model.name, "masks": {}}
        for name in args.masks.split(","):
            mask = visible_masks(name, len(test), model.event_shape, args.seed)
            hidden = (~mask).flatten(1).sum(1).double()
            t0 = time.perf_counter()
            nll = conditional_nll(model, test, mask, args.batch)
            if nll is None:
                row["masks"][name] = None
                print(f"{label:12s} {name:12s} (not exact for this model's ordering)", flush=True)
                continue
            per_pixel = nll / hidden
            cell = {
                "nats_per_hidden_pixel": per_pixel.mean().item(),
                "sem": per_pixel.std().item() / math.sqrt(len(per_pixel)),
                "nats_per_image": nll.mean().item(),
                "hidden_pixels_per_image": hidden.mean().item(),
                "seconds": round(time.perf_counter() - t0, 1),
            }
            row["masks"][name] = cell
            print(
                f"{label:12s} {name:12s} {cell['nats_per_hidden_pixel']:.4f} "
                f"(+/- {cell['sem']:.4f}) nats/hidden pixel, {cell['nats_per_image']:.2f} "
                f"nats/image, {cell['seconds']:.0f} s",
                flush=True,
            )
        doc["rows"].append(row)
        common.write_json(args.out, doc)  # after every model: an interruption keeps the rest
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
