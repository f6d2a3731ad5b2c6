# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Forward+backward of one Linear layer: float vs Brevitas's fixed MXFP8 vs the dMX quantizer.

Weights are frozen (as in dMX training) and the input requires grad (earlier layers' offsets
need it). Reports the step time, the bytes saved for backward, CUDA peak memory where there is a
GPU, and the throughput of the quantizers alone.

    python benchmarks/bench_quantizer.py                    # CPU, the issue's two shapes
    python benchmarks/bench_quantizer.py --device cuda --json out.json
"""

import argparse
import json
import statistics
import time

import brevitas.nn as qnn
from brevitas.quant.mx_quant_ocp import MXFloat8e4m3Act
from brevitas.quant.mx_quant_ocp import MXFloat8e4m3Weight
import torch

from brevitas_dmx.model import use_compiled_kernels
from brevitas_dmx.profiling import saved_tensor_bytes
from brevitas_dmx.quant import DMXFloatAct
from brevitas_dmx.quant import DMXFloatWeight


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _layer(kind, in_features, out_features, device, compiled=False):
    if kind == "float":
        layer = torch.nn.Linear(in_features, out_features, bias=False)
    elif kind == "brevitas-mxfp8":
        layer = qnn.QuantLinear(
            in_features,
            out_features,
            bias=False,
            weight_quant=MXFloat8e4m3Weight,
            input_quant=MXFloat8e4m3Act,
            return_quant_tensor=False)
    else:
        layer = qnn.QuantLinear(
            in_features,
            out_features,
            bias=False,
            weight_quant=DMXFloatWeight,
            input_quant=DMXFloatAct,
            return_quant_tensor=False)
        use_compiled_kernels(layer, compiled)
    layer.weight.requires_grad_(False)
    return layer.to(device).train()


def _time(fn, device, iters, warmup=2):
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_layer(kind, in_features, out_features, tokens, device, iters, compiled=False):
    torch.manual_seed(0)
    layer = _layer(kind, in_features, out_features, device, compiled)
    x = torch.randn(tokens // 512, 512, in_features, device=device, requires_grad=True)

    def step():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).float().pow(2).mean().backward()

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    seconds = _time(step, device, iters)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    _, saved = saved_tensor_bytes(lambda: layer(x))
    result = {
        "kind": kind,
        "shape": f"{in_features}x{out_features}",
        "step_s": seconds,
        "saved_bytes": saved,
        "cuda_peak_bytes": peak
    }
    if kind != "float":
        result.update(_quantizer_throughput(layer, x, device, iters))
    return result


def _quantizer_throughput(layer, x, device, iters):
    """Forward+backward of the weight and input quantizers alone, in bytes moved per second."""

    def weight_and_input():
        q = layer.input_quant(x)
        w = layer.weight_quant(layer.weight)
        q = getattr(q, "value", q)
        w = getattr(w, "value", w)
        (q.float().sum() + w.float().sum()).backward()
        x.grad = None

    seconds = _time(weight_and_input, device, iters)
    element_bytes = x.element_size()
    # Read the input once and write the output once, forward and backward.
    moved = 4 * (x.numel() + layer.weight.numel()) * element_bytes
    return {"quantizers_s": seconds, "quantizers_GBps": moved / seconds / 1e9}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shapes", default="4096x4096,2048x8192", help="IN x OUT, comma-separated")
    parser.add_argument("--tokens", type=int, default=8 * 512)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument(
        "--compile", action="store_true", help="fuse the dMX element-wise work (torch.compile)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for shape in args.shapes.split(","):
        in_features, out_features = map(int, shape.lower().split("x"))
        for kind in ("float", "brevitas-mxfp8", "dmx"):
            rows.append(
                bench_layer(
                    kind, in_features, out_features, args.tokens, device, args.iters, args.compile))
    name = torch.cuda.get_device_name(
    ) if device.type == "cuda" else f"CPU x{torch.get_num_threads()}"
    print(
        f"device: {name}, torch {torch.__version__}, tokens {args.tokens}, "
        f"dMX compiled: {args.compile}")
    print(
        "| shape | quantizer | step (s) | vs float | vs Brevitas MXFP8 | saved for bwd (MiB) "
        "| vs Brevitas | CUDA peak (MiB) | quantizers alone (s) | GB/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    by_key = {(r["shape"], r["kind"]): r for r in rows}
    for r in rows:
        flt, brv = by_key[(r["shape"], "float")], by_key[(r["shape"], "brevitas-mxfp8")]
        peak = "-" if r["cuda_peak_bytes"] is None else f"{r['cuda_peak_bytes'] / 2**20:.0f}"
        print(
            f"| {r['shape']} | {r['kind']} | {r['step_s']:.4f} | {r['step_s'] / flt['step_s']:.2f}x "
            f"| {r['step_s'] / brv['step_s']:.2f}x | {r['saved_bytes'] / 2**20:.0f} "
            f"| {r['saved_bytes'] / brv['saved_bytes']:.2f}x | {peak} "
            f"| {r.get('quantizers_s', float('nan')):.4f} | {r.get('quantizers_GBps', float('nan')):.1f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "tokens": args.tokens, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
