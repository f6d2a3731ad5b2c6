# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Weight rounding on SmolLM2-135M after finalizing to uniform MX (default MXFP4): wall time, where
it goes, and perplexity before and after.

    OMP_NUM_THREADS=1 python benchmarks/weight_rounding.py --nsamples 128 --seqlen 128

``--blocks N`` keeps only the first N decoder blocks (timing only: the perplexity of such a
model means nothing), e.g. to time Brevitas's stock whole-matrix path (``--stock``) on one block.
"""

import argparse
import json
import logging
import time

from brevitas import config as brevitas_config
from brevitas.graph.quantize import layerwise_quantize
import brevitas.nn as qnn
import torch
from torch import nn

import brevitas_dmx as dmx
from brevitas_dmx.data import calibration_samples
from brevitas_dmx.data import evaluation_windows
from brevitas_dmx.data import load_text
from brevitas_dmx.data import split_text
from brevitas_dmx.evaluate import perplexity_of
from brevitas_dmx.evaluate import window_nll
from brevitas_dmx.loading import load_model
from brevitas_dmx.loading import load_tokenizer
from brevitas_dmx.quant import DMXFloatAct
from brevitas_dmx.quant import DMXFloatWeight
from brevitas_dmx.weight_rounding import optimize_weights


def finalized(model, fmt: str, weights_only: bool):
    layer_map = {
        nn.Linear:
            (
                qnn.QuantLinear,
                {
                    "weight_quant": DMXFloatWeight,
                    "input_quant": None if weights_only else DMXFloatAct,
                    "return_quant_tensor": False
                })
    }
    previous = brevitas_config.IGNORE_MISSING_KEYS
    brevitas_config.IGNORE_MISSING_KEYS = True  # the quantizers have no checkpoint entries
    try:
        quant = layerwise_quantize(model, layer_map, name_blacklist=["lm_head"])
    finally:
        brevitas_config.IGNORE_MISSING_KEYS = previous
    dmx.apply_format_map(quant, {name: fmt for name, _ in dmx.dmx_layers(quant)})
    return dmx.finalize(quant.eval())


def ppl(model, windows, seqlen) -> float:
    return perplexity_of(window_nll(model, windows, batch_size=8), seqlen)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--algorithm", default="gptq")
    parser.add_argument("--format", default="e2m1")
    parser.add_argument("--weights-only", action="store_true")
    parser.add_argument("--nsamples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--eval-windows", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--act-order", action="store_true")
    parser.add_argument("--stock", action="store_true", help="Brevitas's whole-matrix path")
    parser.add_argument("--blocks", type=int, default=None)
    parser.add_argument("--skip-ppl", action="store_true")
    parser.add_argument("--output", default=None, help="append the result as a JSON line")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    torch.manual_seed(0)

    tokenizer = load_tokenizer("smollm2-135m")
    calib_text, eval_text = split_text(load_text("enwiki-gensim"))
    calib = calibration_samples(tokenizer, calib_text, args.nsamples, args.seqlen, seed=0)
    windows = evaluation_windows(tokenizer, eval_text, args.seqlen, args.eval_windows)
    model = load_model("smollm2-135m")
    if args.blocks is not None:
        model.model.layers = model.model.layers[:args.blocks]
        model.config.num_hidden_layers = args.blocks
    result = vars(args).copy()
    if not args.skip_ppl:
        result["ppl_float"] = ppl(model, windows, args.seqlen)
    model = finalized(model, args.format, args.weights_only)
    if not args.skip_ppl:
        result["ppl_rtn"] = ppl(model, windows, args.seqlen)
        print(f"perplexity float {result['ppl_float']:.3f}  RTN {result['ppl_rtn']:.3f}")
    start = time.perf_counter()
    info = optimize_weights(
        model,
        calib,
        args.algorithm,
        batch_size=args.batch_size,
        act_order=args.act_order,
        fast_path=not args.stock)
    result["wall_s"] = time.perf_counter() - start
    result["info"] = info
    if not args.skip_ppl:
        result["ppl_optimized"] = ppl(model, windows, args.seqlen)
    print(json.dumps(result, indent=1))
    if args.output:
        with open(args.output, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
