"""Order-agnostic models on fixed binarized MNIST: what an ensemble of masks buys, and what an
exact log-likelihood costs.

* ``--checkpoint RUN``: a trained ``made`` or ``deep-nade`` run (``--members E``: evaluated as
  an ensemble of E members, whatever it was trained with). The test NLL (all 10,000 images) of every
  member alone and of the ensembles of the first k members, k = 1, 2, 4, ..., E (the mixture of
  joints, ``log mean_e p_e(x)``), and the exact marginal NLL of the visible pixels and the
  conditional NLL of the hidden ones for two masks that are not prefixes (checkerboard, right
  half) on the first 1,000 test images.
* ``--cost``: milliseconds per image of an exact ``log_prob`` of 28 x 28 images at H=500:
  MADE (one pass per member) against DeepNADE with 1, 2 and 3 hidden layers (D = 784 passes,
  batched: one cumulative sum for the first layer, ``(B, D, H)`` products above it), measured
  in one process, interleaved, best of 3.

Writes ``benchmarks/results/any_order.json``.

Examples::

    python benchmarks/any_order.py --checkpoint runs/made-bench
    python benchmarks/any_order.py --cost --threads 2
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys

import _common as common
import torch


def nll(model, x: torch.Tensor, batch: int = 500, **kw) -> torch.Tensor:
    """Per-image NLL in nats ``(N,)`` float64, in batches, no gradients."""
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out.append(-model.log_prob(x[i : i + batch], **kw).double())
    return torch.cat(out)


def ensemble_curve(run: str, data_dir: str | None, members: int | None = None) -> dict:
    import chainrule
    from chainrule.completion import conditional_log_likelihood, occlusion_mask

    model = chainrule.load(run).eval()
    if members and members != model.config.ensemble:  # the same weights, E members
        model = common.with_options(model, ensemble=members)
    test = common.binarized_mnist(data_dir, torch.float32)["test"]
    n_e = model.config.ensemble
    xf = test.flatten(1)
    members = []  # (E, N) log p_e(x)
    with torch.no_grad():
        for e in range(n_e):
            o = model.member_order(e)
            lp = [
                model.head.log_prob(model.step_params(xf[i : i + 500], o, e), xf[i : i + 500][:, o])
                .sum(1)
                .double()
                for i in range(0, len(xf), 500)
            ]
            members.append(torch.cat(lp))
            print(f"member {e}: test NLL {-members[-1].mean():.3f}", flush=True)
    members_t = torch.stack(members)
    single = [-m.mean().item() for m in members]
    curve = []
    k = 1
    while k <= n_e:
        lp = torch.logsumexp(members_t[:k], 0) - math.log(k)
        curve.append(
            {
                "members": k,
                "test_nll": -lp.mean().item(),
                "sem": lp.std().item() / math.sqrt(len(lp)),
            }
        )
        print(f"ensemble of {k:2d}: test NLL {curve[-1]['test_nll']:.3f}", flush=True)
        k *= 2
    masks = {}
    for spec in ("checkerboard", "right-half"):
        mask = occlusion_mask(spec, model.event_shape)
        x = test[:1000]
        observed = -nll_observed(model, x, mask)
        hidden = -conditional_log_likelihood(model, x, mask).double()
        masks[spec] = {
            "visible_pixels": int(mask.sum()),
            "marginal_nll_visible": observed.mean().item(),
            "conditional_nll_hidden": hidden.mean().item(),
            "images": len(x),
        }
        print(
            f"{spec}: -log p(visible) {observed.mean():.3f}, -log p(hidden | visible) {hidden.mean():.3f} nats"
        )
    return {
        "run": run,
        "config": {k: v for k, v in vars(model.config).items()},
        "test_images": len(test),
        "single_member_nll": single,
        "single_member_median": statistics.median(single),
        "ensemble_curve": curve,
        "masks_first_1000_test_images": masks,
    }


def nll_observed(model, x, mask) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat(
            [model.log_prob_observed(x[i : i + 250], mask).double() for i in range(0, len(x), 250)]
        )


def cost(batch: int) -> dict:
    import chainrule

    torch.manual_seed(0)
    x = (torch.rand(batch, 1, 28, 28) < 0.13).float()
    models = {"made": chainrule.build("made", (1, 28, 28), 2, hidden=500).eval()}
    for layers in (1, 2, 3):
        models[f"deep-nade-{layers}"] = chainrule.build(
            "deep-nade", (1, 28, 28), 2, hidden=500, layers=layers
        ).eval()
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(3):  # interleaved rounds
        for name, m in models.items():
            with torch.no_grad():
                times[name].append(common.best_of(lambda m=m: m.log_prob(x), repeats=1))
    out = {}
    for name, ts in times.items():
        best = min(ts)
        out[name] = {"ms_per_image": 1e3 * best / batch, "ratio_to_made": best / min(times["made"])}
        print(
            f"{name:12s} {1e3 * best / batch:8.3f} ms per image  ({out[name]['ratio_to_made']:.1f}x MADE)"
        )
    return {"batch": batch, "hidden": 500, "log_prob": out}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", help="a trained made or deep-nade run folder")
    p.add_argument(
        "--members",
        type=int,
        default=None,
        help="evaluate the network as an ensemble of this many members (default: its own)",
    )
    p.add_argument("--cost", action="store_true", help="time exact log_prob of MADE and DeepNADE")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=str(common.RESULTS / "any_order.json"))
    args = p.parse_args(argv)
    if not (args.checkpoint or args.cost):
        p.error("give --checkpoint RUN and/or --cost")
    common.set_threads(args.threads)
    doc = common.header()
    if args.cost:
        doc["cost"] = cost(args.batch)
    if args.checkpoint:
        doc["ensemble"] = ensemble_curve(args.checkpoint, args.data_dir, args.members)
    print(f"wrote {common.write_json(args.out, doc)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
