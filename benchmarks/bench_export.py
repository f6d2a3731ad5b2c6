# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Deployment cost of a mixed MX model: QONNX export, reloadable checkpoint, packed weights.

For every average in ``--bits`` the model is quantized the way ``brevitas_dmx_llm`` does it
(every Linear but the LM head), pinned to formats that reach that average (4: all MXFP4, 8: all
MXFP8, in between: that share of the layers, spread evenly along the depth, in MXFP8 and the
rest in MXFP4), and finalized. It then times ``export_qonnx``, ``save_pretrained`` and
``pack_weights`` and prints a Markdown table of times and file sizes, with the packed size that
the memory-weighted average bits with scales predicts.

    python benchmarks/bench_export.py --model smollm2-135m --bits 4 6 8
    python benchmarks/bench_export.py --model smollm2-135m --bits 6 --exporter dynamo
"""

import argparse
import json
import os
import shutil
import tempfile
import time

from brevitas.graph.quantize import layerwise_quantize
import brevitas.nn as qnn
import torch
from torch import nn

import brevitas_dmx as dmx
from brevitas_dmx.export import export_causal_lm_qonnx
from brevitas_dmx.export import load_pretrained
from brevitas_dmx.export import pack_weights
from brevitas_dmx.export import save_pretrained
from brevitas_dmx.loading import load_model
from brevitas_dmx.quant import DMXFloatAct
from brevitas_dmx.quant import DMXFloatWeight


def mixed_formats(n_layers: int, bits: float):
    """``n_layers`` formats with a simple average of ``bits``: MXFP8 for a share (bits - 4) / 4
    of the layers, spread evenly (Bresenham) so every depth gets some, MXFP4 elsewhere."""
    if not 4 <= bits <= 8:
        raise ValueError(f"--bits {bits}: the MXFP4/MXFP8 mixes reach 4 to 8 bits only")
    share = (bits - 4) / 4
    return [
        "e4m3" if int((i + 1) * share + 1e-9) > int(i * share + 1e-9) else "e2m1"
        for i in range(n_layers)
    ]


def quantized_model(name: str, bits: float, weights_only: bool):
    model = load_model(name, "float32")
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
    model = layerwise_quantize(model, layer_map, name_blacklist=["lm_head"])
    names = [layer for layer, _ in dmx.dmx_layers(model)]
    dmx.apply_format_map(model, dict(zip(names, mixed_formats(len(names), bits))))
    model.eval()
    return dmx.finalize(model)


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(
        os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def _mb(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.1f}"


def run(args) -> list:
    rows = []
    for bits in args.bits:
        model = quantized_model(args.model, bits, args.weights_only)
        report = dmx.bits_report(model)
        work = tempfile.mkdtemp(prefix="bench_export_", dir=args.workdir)
        try:
            row = {
                "bits": bits,
                "simple": report["simple"],
                "memory": report["memory"],
                "memory_with_scales": report["memory_with_scales"]
            }
            ids = torch.randint(0, model.config.vocab_size, (1, args.seqlen))
            with torch.no_grad():
                reference = model(input_ids=ids).logits
            for exporter in args.exporter:
                path = os.path.join(work, f"model_{exporter}.onnx")
                _, row[f"export_{exporter}_s"] = _timed(
                    export_causal_lm_qonnx, model, path, seqlen=args.seqlen,
                    dynamo=exporter == "dynamo")
                # The file and, past protobuf's 2 GB, its external data next to it.
                row[f"onnx_{exporter}_bytes"] = sum(
                    _size(os.path.join(work, f))
                    for f in os.listdir(work)
                    if f.startswith(f"model_{exporter}"))
            checkpoint = os.path.join(work, "checkpoint")
            _, row["save_s"] = _timed(save_pretrained, model, checkpoint)
            row["checkpoint_bytes"] = _size(checkpoint)
            reloaded, row["load_s"] = _timed(load_pretrained, checkpoint)
            with torch.no_grad():
                row["reload_equal"] = bool(torch.equal(reloaded(input_ids=ids).logits, reference))
            del reloaded
            info, row["pack_s"] = _timed(pack_weights, model, os.path.join(work, "packed.st"))
            row.update(
                packed_payload_bytes=info["payload_bytes"],
                packed_file_bytes=info["file_bytes"],
                elements=info["elements"],
                predicted_bytes=report["memory_with_scales"] * info["elements"] / 8)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        rows.append(row)
        del model
    return rows


def markdown(rows, exporters) -> str:
    head = ["bits (simple / memory+scales)"]
    for exporter in exporters:
        head += [f"export {exporter} (s)", f"ONNX {exporter} (MiB)"]
    head += [
        "save_pretrained (s)",
        "checkpoint (MiB)",
        "load_pretrained (s)",
        "reload equal",
        "pack (s)",
        "packed file (MiB)",
        "packed payload (B)",
        "predicted (B)"
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r['simple']:.2f} / {r['memory_with_scales']:.3f}"]
        for exporter in exporters:
            cells += [f"{r[f'export_{exporter}_s']:.1f}", _mb(r[f"onnx_{exporter}_bytes"])]
        cells += [
            f"{r['save_s']:.1f}",
            _mb(r["checkpoint_bytes"]),
            f"{r['load_s']:.1f}",
            "yes" if r["reload_equal"] else "NO",
            f"{r['pack_s']:.1f}",
            _mb(r["packed_file_bytes"]),
            f"{r['packed_payload_bytes']:,}",
            f"{r['predicted_bytes']:,.0f}"
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="hub id, folder, .gguf or alias")
    parser.add_argument("--bits", type=float, nargs="+", default=[4.0, 6.0, 8.0])
    parser.add_argument("--seqlen", type=int, default=128, help="token ids the graph takes")
    parser.add_argument(
        "--exporter", nargs="+", choices=["torchscript", "dynamo"], default=["torchscript"])
    parser.add_argument("--weights-only", action="store_true", help="leave Linear inputs float")
    parser.add_argument("--workdir", default=None, help="where the files go (deleted after)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = run(args)
    print(markdown(rows, args.exporter))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
