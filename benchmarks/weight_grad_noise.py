# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""How noisy is the sampled weight format gradient (``DMXQuantLinear.weight_grad_tokens``)?

For a few batches of real text, each offset's gradient is computed exactly and from every
systematic token sample of the given stride (one forward, one backward per sample start).
Two spreads per layer are compared: the sampling spread (std over sample starts, same batch) and
the batch spread (std of the exact gradient over batches): if the first is well below the second,
sampling adds little to the noise SGD already has; if it is comparable or above, it is like
training on a much smaller batch.

    python benchmarks/weight_grad_noise.py --text ../shared/data/text/enwiki_gensim_clean.txt \
        --batch 2 --seqlen 128 --stride 8 --batches 3 --starts 4
"""

import argparse
import os
import statistics
import sys

import torch

import brevitas_dmx as dmx
from brevitas_dmx.core import linear
from brevitas_dmx.core.linear import set_weight_grad_tokens

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_step import quantize  # noqa: E402  (the same quantized model as the step benchmark)


def offset_grads(model, loss, retain):
    offsets = dmx.dmx_offsets(model)
    for o in offsets:
        o.raw_offset.grad = None
    loss.backward(retain_graph=retain)
    return torch.stack([o.raw_offset.grad.detach().clone().reshape(()) for o in offsets])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--text", required=True)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--starts", type=int, default=None, help="sample starts (default all)")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    from brevitas import config
    config.IGNORE_MISSING_KEYS = True
    from brevitas_dmx.data import load_text
    import brevitas_dmx.functional as functional
    from brevitas_dmx.models import load_model
    from brevitas_dmx.models import load_tokenizer
    functional.enable_compile(args.compile)
    model = quantize(load_model(args.model, "float32"), "dmx")
    tokenizer = load_tokenizer(args.model)
    ids = tokenizer(load_text(args.text)[:2_000_000], return_tensors="pt").input_ids[0]
    dmx.train_only_offsets(model)
    model.train()
    rows = args.batch * args.seqlen
    tokens = -(-rows // args.stride)
    starts = list(range(args.stride))[:args.starts or args.stride]
    exact, sampled = [], []
    original = linear.sample_stride_and_start
    for b in range(args.batches):
        chunk = ids[b * rows:(b + 1) * rows].reshape(args.batch, args.seqlen)
        set_weight_grad_tokens(model, None)
        exact.append(offset_grads(model, model(input_ids=chunk, labels=chunk).loss, False))
        set_weight_grad_tokens(model, tokens)  # the autograd function takes it at forward time
        loss = model(input_ids=chunk, labels=chunk).loss
        per_start = []
        try:
            for i, s in enumerate(starts):
                linear.sample_stride_and_start = lambda n, limit, s=s: (args.stride, s)
                per_start.append(offset_grads(model, loss, retain=i + 1 < len(starts)))
        finally:
            linear.sample_stride_and_start = original
        sampled.append(torch.stack(per_start))
        print(f"batch {b + 1}/{args.batches} done", flush=True)
    exact = torch.stack(exact)  # batches x offsets
    batch_std = exact.std(0)
    mean_abs = exact.mean(0).abs()
    spread = torch.stack(sampled).std(1).pow(2).mean(0).sqrt()  # over sample starts
    print(
        f"{args.model}, {args.batches} batches of {args.batch}x{args.seqlen} tokens, weight grad "
        f"from every {args.stride}th token ({tokens} of {rows}), {len(starts)} sample starts, "
        f"{exact.shape[1]} offsets")
    print("| quantity (over offsets) | median | 90th percentile |")
    print("|---|---|---|")
    for name, values in (("batch std / abs mean gradient", batch_std / mean_abs),
                         ("sampling std / batch std", spread / batch_std.clamp_min(1e-30)),
                         ("sampling std / abs mean gradient", spread / mean_abs)):
        v = sorted(values.tolist())
        print(f"| {name} | {statistics.median(v):.3f} | {v[int(0.9 * (len(v) - 1))]:.3f} |")


if __name__ == "__main__":
    main()
