"""Evaluation in chunks (``_PixelNet.eval_chunk_bytes``) against the whole batch at once.

Without gradients the PixelRNN models run a batch in chunks whose widest per-layer buffer stays
under 24 MiB, so that glibc reuses the freed memory of the last chunk (``chainrule.allocator``)
instead of mapping fresh pages for every layer's buffers (the Row LSTM's taps at batch 256:
115 MB a layer). Per model (paper sizes, 28 x 28 binary images), ``log_prob`` under
``torch.no_grad()`` of one batch, chunked and whole, interleaved round by round in one process
with freed memory kept as the commands run; medians and their ratio. PixelCNN, which is not
chunked (``buffer_width = 0``), is measured in chunks of its residual stream's width (2h a
pixel) to show why. Writes ``benchmarks/results/eval_chunks.json``.

    python benchmarks/eval_chunks.py                 # about 2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import RESULTS, header, load_average, set_threads, write_json
from roofline import options

import chainrule
from chainrule import allocator

MODELS = ("row-lstm", "diagonal-bilstm", "pixelcnn")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--batch", type=int, default=256, help="the trainer's evaluation batch")
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS / "eval_chunks.json"))
    args = p.parse_args()
    set_threads(args.threads)
    kept = allocator.keep_freed_memory()
    doc = header(
        threads=torch.get_num_threads(),
        batch=args.batch,
        freed_memory_kept=kept,
        load_average_at_start=load_average(),
    )
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(args.batch, 1, 28, 28, generator=g) < 0.3).float()
    doc["results"] = {}
    for name in args.models:
        torch.manual_seed(0)
        model = chainrule.build(name, (1, 28, 28), 2, **options(name, "paper")).eval()
        chunk_bytes, width = model.eval_chunk_bytes, model.buffer_width
        model.buffer_width = width or 2  # PixelCNN: what chunks would give
        times: dict[str, list[float]] = {"chunked": [], "whole": []}
        for r in range(args.repeats):
            for mode in ("chunked", "whole") if r % 2 == 0 else ("whole", "chunked"):
                model.eval_chunk_bytes = chunk_bytes if mode == "chunked" else 1 << 60
                t0 = time.perf_counter()
                with torch.no_grad():
                    model.log_prob(x)
                times[mode].append(time.perf_counter() - t0)
        model.eval_chunk_bytes = chunk_bytes
        chunk = model.eval_chunk(x)
        model.buffer_width = width
        whole, chunked = (statistics.median(times[m]) for m in ("whole", "chunked"))
        row = {
            "chunk_images": chunk,
            "chunked_by_default": width > 0,
            "whole_img_per_s": args.batch / whole,
            "chunked_img_per_s": args.batch / chunked,
            "speedup": whole / chunked,
            "times": times,
        }
        doc["results"][name] = row
        print(
            f"{name}: chunks of {row['chunk_images']} images: {row['chunked_img_per_s']:.0f} "
            f"img/s, the whole batch of {args.batch}: {row['whole_img_per_s']:.0f} img/s -> "
            f"{row['speedup']:.2f}x" + ("" if width else " (not chunked by default)")
        )
    doc["load_average_at_end"] = load_average()
    write_json(args.out, doc)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
