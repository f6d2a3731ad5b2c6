# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""What a finished run writes and prints: metrics.json, format_map.json, the bits plot, the
results line, the summary table and the line naming the output folder's files."""

import json
import os
import time
from typing import Dict, List

from brevitas_dmx.evaluate import plot_bits
from brevitas_dmx.formats import element_format
from brevitas_dmx.llm.plan import METRICS_FILE
from brevitas_dmx.llm.record import RunRecord
from brevitas_dmx.pipeline import log_format_table

FORMAT_MAP_FILE = "format_map.json"


def uniform_stem(fmt) -> str:
    """The uniform baseline's key stem, e.g. mxfp4_e2m1 (metrics.json: uniform_mxfp4_e2m1_ppl)."""
    return f"{fmt.mx_name}_{fmt.name}"


def write_metrics(out_dir: str, record: RunRecord) -> None:
    with open(os.path.join(out_dir, METRICS_FILE), "w") as f:
        json.dump(record.to_json(), f, indent=1)


def write_format_map(plan, record: RunRecord, fmap: Dict) -> None:
    """format_map.json, the bits-per-layer plot and the format table."""
    args = plan.args
    with open(os.path.join(plan.out_dir, FORMAT_MAP_FILE), "w") as f:
        json.dump(fmap, f, indent=1)
    target = f" at {args.dmx_target_bits:g} bits" if args.dmx_target_bits else ""
    plot_bits(
        fmap,
        os.path.join(plan.out_dir, "bits_per_layer.png"),
        f"{args.model}: {record.method}{target} ({args.dmx_average})")
    log_format_table(fmap)


def append_result(path: str, record: RunRecord, plan) -> None:
    """One JSON line per run: what a sweep needs to draw its table and plot."""
    args = plan.args
    record.label = args.dmx_label
    record.seed = args.seed
    record.nsamples = args.nsamples
    record.steps = args.dmx_steps if record.train_steps is not None else None
    record.regularizer = args.dmx_regularizer
    record.output = os.path.abspath(plan.out_dir)
    record.finished = time.strftime("%Y-%m-%dT%H:%M:%S")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record.result_line()) + "\n")


def summary(record: RunRecord) -> str:
    """The run's results as a table: float, each uniform format, the method's point."""
    lines = [
        "| model | perplexity | avg bits | avg bits + scales |",
        "|---|---|---|---|",
        f"| float | {record.float_ppl:.3f} | 32 | - |"
    ]
    for stem, value in record.uniform.items():
        fmt = element_format(stem.split("_")[1])
        lines.append(
            f"| uniform {fmt.mx_name.upper()} ({fmt.name}) "
            f"| {value:.3f} | {fmt.bits} | {fmt.bits + 0.25:g} |")
    if record.avg_bits is not None:
        target = record.target_bits
        label = f"{record.method} ({record.average}" + (
            f", target {target:g})" if target is not None else ")")
        lines.append(
            f"| {label} | {record.quant_ppl:.3f} | {record.avg_bits:.3f} "
            f"| {record.avg_bits_with_scales:.3f} |")
    rounding = record.weight_rounding
    if rounding:
        lines.append(
            f"\n{' + '.join(a.upper() for a in rounding['algorithms'])} on the final map: "
            f"perplexity {rounding['rtn_ppl']:.3f} with round-to-nearest weights -> "
            f"{record.quant_ppl:.3f} ({_ratio(rounding['paired_vs_rtn'])}), "
            f"{rounding['time_s']:.1f} s")
    if record.texts:
        lines.append("\n" + texts_table(record))
    if record.gap_closed is not None:
        lines.append(
            f"\nShare of the low->high format perplexity gap closed: "
            f"{100 * record.gap_closed:.1f} %")
    for task, value in (record.accuracy or {}).items():
        lines.append(f"Zero-shot {task}: accuracy {value['acc']:.4f}")
    lines.append(
        f"Search time {record.search_time_s:.1f} s, total {record.total_time_s:.1f} s, "
        f"peak memory {record.peak_mem_bytes / 2**30:.2f} GiB")
    return "\n".join(lines)


def written_summary(out_dir: str, deployed: List[str]) -> str:
    """What the output folder holds now (the checkpoints and the offsets too), and the paths
    of ``--dmx-save-pretrained``, ``--dmx-export-qonnx`` and ``--dmx-export-quark`` outside it."""
    held = sorted(
        entry + ("/" if os.path.isdir(os.path.join(out_dir, entry)) else "")
        for entry in os.listdir(out_dir))
    folder = os.path.abspath(out_dir)
    outside = [path for path in deployed if not os.path.abspath(path).startswith(folder + os.sep)]
    return f"output folder {out_dir}: {', '.join(held)}" + "".join(f"; wrote {p}" for p in outside)


def _ratio(stats: Dict) -> str:
    """A paired ratio as a signed percentage with its interval, e.g. -2.6 % [-4.0, -1.3]."""
    pct = [100 * (stats[key] - 1) for key in ("ratio", "low", "high")]
    level = " level" if pct[1] <= 0 <= pct[2] else ""
    return f"{pct[0]:+.1f} % [{pct[1]:+.1f}, {pct[2]:+.1f}]{level}"


def texts_table(record: RunRecord) -> str:
    """Per --dmx-eval-datasets text: windows, float, each uniform and the method's perplexity,
    and the method against each baseline (paired 95 % interval over windows)."""
    stems = sorted({stem for text in record.texts.values() for stem in text["uniform"]})
    baselines = ["float"] + [f"uniform_{s}" for s in stems]
    if any("rtn" in text["paired"] for text in record.texts.values()):
        baselines.append("rtn")  # the same map with round-to-nearest weights
    header = ["text", "windows", "float"] + [f"uniform {s}" for s in stems]
    header += [record.method] + [f"vs {key}" for key in baselines]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, text in record.texts.items():
        row = [os.path.basename(name), f"{text['windows']} x {text['seqlen']}"]
        row += [f"{text['float_ppl']:.3f}"] + [f"{text['uniform'][s]:.3f}" for s in stems]
        row.append(f"{text['quant_ppl']:.3f}")
        paired = text["paired"]
        row += [_ratio(paired[k]) if k in paired else "-" for k in baselines]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
