"""The text ``chainrule train`` prints at the end of a run (from its result dict)."""

from __future__ import annotations


def describe_result(result: dict, dim: int) -> str:
    """The lines ``chainrule train`` prints at the end."""
    deq = " (discrete-equivalent: dequantized, + D ln K)" if result.get("dequantized") else ""
    procs = result.get("processes", 1)
    where = f"{result['device']}" + (f" x {procs} processes" if procs > 1 else "")
    n = result.get("threads")
    threads = f", {n} thread{'s' if n != 1 else ''}" if n else ""
    if result.get("native_kernels"):
        threads += ", compiled kernels"
    best = result.get("best_epoch")
    why = {
        "early stopping": "stopped early (no better valid NLL within the patience)",
        "time budget": "stopped by the time budget",
        "epochs": "all epochs done",
        "closed form": "fitted by counting",
    }.get(result.get("stop_reason") or "", "")
    lines = [
        f"test NLL: {result['test_nll_nats']:.3f} nats per image (+/- {result['test_nll_stderr']:.3f}), "
        f"{result['test_bits_per_dim']:.4f} bits/dim{deq}"
        + (
            f", weights of epoch {best:g} (best valid NLL {result['best_valid_nll']:.3f})"
            if best
            else ""
        ),
        f"model {result['model']} ({result['num_parameters']:,} parameters) on {result['data']}, "
        f"{result['epochs']:g} epoch{'s' if result['epochs'] != 1 else ''} in {result['seconds']:.1f} "
        f"{'CPU ' if result.get('clock') == 'cpu' else ''}s on {where}{threads}"
        + (f"; {why}" if why else ""),
    ]
    if result.get("data_caveat"):
        lines.append(f"note: {result['data_caveat']}")
    return "\n".join(lines)
