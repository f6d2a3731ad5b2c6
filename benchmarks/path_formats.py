# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Perplexity with every layer on the format that training sees at one offset beta.

    OMP_NUM_THREADS=1 python benchmarks/path_formats.py --model smollm2-135m \\
        --dataset ../shared/data/text/enwiki_gensim_clean.txt --ladder e2m1,e2m3,e4m3 \\
        --betas 0.5,1,1.5,2.5,3,3.5,4

Between two formats of a ladder the path passes through in-between formats (E3M3 between E2M3
and E4M3). If one of them is better than both formats around it, the continuous relaxation
rewards a place no layer can end on. Prints one JSON line per beta.
"""

import argparse
import json

import torch

from brevitas_dmx import llm
from brevitas_dmx.core.quant import DMXFloatQuant
from brevitas_dmx.evaluate import perplexity_of
from brevitas_dmx.evaluate import window_nll
from brevitas_dmx.formats import ladder as get_ladder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--ladder", default="e2m1,e2m3,e4m3")
    parser.add_argument("--betas", required=True, help="comma-separated offsets")
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--windows", type=int, default=128)
    parser.add_argument("--output", default="runs/path_formats")
    args = parser.parse_args()
    ladder = get_ladder(args.ladder)
    argv = [
        "--model",
        args.model,
        "--dataset",
        args.dataset,
        "--dmx",
        "--dmx-ladder",
        args.ladder,
        "--dmx-target-bits",
        str(ladder.max_bits),
        "--seqlen",
        str(args.seqlen),
        "--nsamples",
        "8",
        "--dmx-eval-windows",
        str(args.windows),
        "--dmx-output",
        args.output
    ]
    parser_llm, run_args, _, defaults = llm.parse(argv)
    llm.validate(parser_llm, run_args, defaults)
    run = llm._start(run_args)
    llm._load(run)
    llm._quantize(run)
    for beta in (float(b) for b in args.betas.split(",")):
        e, m = ladder.widths(beta)
        # Pinned widths win over the offset, and evaluation (eval mode) keeps them.
        for quant in run.model.modules():
            if isinstance(quant, DMXFloatQuant):
                quant.pinned_widths.copy_(torch.tensor([float(e), float(m)]))
                quant._pinned = True
        nll = window_nll(run.model, run.windows, 8, f"beta {beta}")
        print(
            json.dumps(
                {
                    "ladder": args.ladder,
                    "beta": beta,
                    "exponent_bits": float(e),
                    "mantissa_bits": float(m),
                    "perplexity": perplexity_of(nll, args.seqlen)
                }),
            flush=True)


if __name__ == "__main__":
    main()
