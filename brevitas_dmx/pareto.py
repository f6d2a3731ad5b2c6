# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""``brevitas_dmx_pareto``: the quality-versus-bits picture of every method for one model.

Runs float, uniform formats, the hand-made MLP-in-8-bits map, the kl and fisher baselines and
dMX (once per target) through ``brevitas_dmx_llm``, in this process, appending one line per point
to ``results.jsonl`` in the output folder. A point already in the results file is not run again,
and an interrupted dMX training resumes from its last checkpoint, so an interrupted sweep is
finished by running the same command again. Every run ends by writing ``pareto.md`` (table) and
``pareto.png`` (perplexity and accuracy against average bits, one line per method) from all the
results in the file, so sweeps over several ladders accumulate into one picture. Where a dMX
point and the kl and fisher points at its target were evaluated on the same windows, the table
is followed by a paired comparison of dMX against the better baseline, with a bootstrap
confidence interval over the windows: differences of a percent or less are often chance.

Everything after ``--`` goes to ``brevitas_dmx_llm`` unchanged (sequence length, samples, steps,
evaluation tasks, which average the budget binds, ...).
"""

import argparse
import json
import logging
import os
import re
import sys
from typing import Dict, List, Optional, Tuple

from brevitas_dmx import config
from brevitas_dmx import llm
from brevitas_dmx.config import Method
from brevitas_dmx.evaluate import paired_ratio
from brevitas_dmx.formats import AUTO_LADDER
from brevitas_dmx.formats import DEFAULT_LADDER
from brevitas_dmx.formats import element_format
from brevitas_dmx.formats import ladder as get_ladder
from brevitas_dmx.llm.record import RunRecord

# By name: run as ``python -m brevitas_dmx.pareto`` this module is __main__.
logger = logging.getLogger("brevitas_dmx.pareto")

# The built-in methods in the order of the table: the baselines first, dMX last.
METHODS = tuple(
    m.value
    for m in (Method.FLOAT, Method.UNIFORM, Method.MLP8, Method.KL, Method.FISHER, Method.DMX))
RESULTS_FILE = "results.jsonl"
# The headline average: bits per weight element with the E8M0 scales, i.e. true weight memory.
HEADLINE = "memory_with_scales"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brevitas_dmx_pareto",
        description="Runs every method at every target and draws perplexity / accuracy "
        "against average bits. Arguments after -- go to brevitas_dmx_llm.")
    parser.add_argument("--model", required=True, help="As brevitas_dmx_llm --model.")
    parser.add_argument("--dataset", required=True, help="As brevitas_dmx_llm --dataset.")
    parser.add_argument(
        "--ladder",
        default=DEFAULT_LADDER,
        help="As brevitas_dmx_llm --dmx-ladder: a chain of formats, lowest first, a named "
        "ladder, or auto (default): the default chain's two formats around each target.")
    parser.add_argument(
        "--targets", type=float, nargs="+", default=[], help="Bit budgets (kl, fisher, dmx).")
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=list(METHODS),
        help="Which methods to run (all by default).")
    parser.add_argument(
        "--uniform-formats",
        nargs="+",
        default=None,
        help="Formats of the uniform points (default: e2m1, e2m3, e4m3: MXFP4, MXFP6, MXFP8).")
    parser.add_argument(
        "--retarget-from",
        type=float,
        default=None,
        help="One of --targets: the offsets dMX learned for it are also re-projected onto every "
        "other target, without training (extra points, the 'dmx retargeted' line).")
    parser.add_argument(
        "--format-maps",
        nargs="+",
        default=[],
        metavar="FILE",
        help="Format maps to evaluate beside the methods (another tool's choices, e.g. "
        "benchmarks/peers.py's): one point each, labelled map-<file name>; files named "
        "<series>-<target>.json draw one line per series.")
    parser.add_argument("--output", required=True, help="Folder for the points and the report.")
    parser.add_argument(
        "--average",
        default=HEADLINE,
        help="The average on the table's and plot's x axis: simple, size, memory, each "
        "optionally with _with_scales (default: %(default)s, the memory per weight).")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="Only (re)write pareto.md and pareto.png from the results file.")
    return parser


def _target_label(target: float) -> str:
    return f"{target:g}"


def ladder_tag(name: str) -> str:
    """The ladder as it appears in point labels and folder names: 'e2m1-e2m3-e4m3' ('auto' for
    the default, whose ladder each point's target picks)."""
    if name == AUTO_LADDER:
        return AUTO_LADDER
    return get_ladder(name).name.replace(",", "-")


def _retarget_ladder(args, llm_argv: List[str]) -> List[str]:
    """The ladder flag of the points re-targeted from --retarget-from: the ladder that point's
    offsets are learned on (auto picks it from the source's target, not each point's), as
    brevitas_dmx_llm resolves it from the source's command line."""
    if args.ladder != AUTO_LADDER:
        return ["--dmx-ladder", args.ladder]
    source = [
        "--model",
        args.model,
        "--dataset",
        args.dataset,
        "--dmx",
        "--dmx-target-bits",
        str(args.retarget_from)
    ]
    _, source_args, _, _ = llm.parse(source + llm_argv)
    return ["--dmx-ladder", llm.run_ladder(source_args).name]


def plan_points(args, llm_argv: List[str]) -> List[Tuple[str, List[str]]]:
    """(label, brevitas_dmx_llm arguments) of every point of the sweep, in run order."""
    common = ["--model", args.model, "--dataset", args.dataset, "--dmx"]
    ladder = ["--dmx-ladder", args.ladder]
    # rotated points get folders and labels of their own, so one output can hold both
    rotated = "-rotated" if "--rotation" in llm_argv else ""
    tag = ladder_tag(args.ladder) + rotated
    points = []
    if "float" in args.methods:
        points.append(("float", common + ["--dmx-method", "float"]))
    formats = args.uniform_formats or ["e2m1", "e2m3", "e4m3"]
    if "uniform" in args.methods:
        for fmt in formats:
            name = element_format(fmt).name
            points.append(
                (
                    f"uniform-{name}{rotated}",
                    common + ["--dmx-method", "uniform", "--dmx-format", name]))
    if "mlp8" in args.methods:
        points.append((f"mlp8-{tag}", common + ladder + ["--dmx-method", "mlp8"]))
    for method in ("kl", "fisher", "dmx"):
        if method not in args.methods:
            continue
        for target in args.targets:
            label = f"{method}-{tag}-{_target_label(target)}"
            points.append(
                (
                    label,
                    common + ladder + [
                        "--dmx-method",
                        method,
                        "--dmx-target-bits",
                        str(target),
                        "--dmx-skip-baselines"
                    ]))
    for path in args.format_maps:
        name = os.path.splitext(os.path.basename(path))[0]
        points.append(
            (f"map-{name}{rotated}", common + ladder + ["--dmx-format-map", os.path.abspath(path)]))
    out = os.path.abspath(args.output)
    if args.retarget_from is not None and "dmx" in args.methods:
        source = os.path.join(out, "points", f"dmx-{tag}-{_target_label(args.retarget_from)}")
        for target in args.targets:
            if target == args.retarget_from:
                continue
            label = (
                f"retarget-{tag}-{_target_label(target)}-from-"
                f"{_target_label(args.retarget_from)}")
            points.append(
                (
                    label,
                    common + _retarget_ladder(args, llm_argv) + [
                        "--dmx-method",
                        "dmx",
                        "--dmx-target-bits",
                        str(target),
                        "--dmx-skip-baselines",
                        "--dmx-retarget-from",
                        source
                    ]))
    runs = []
    for label, argv in points:
        folder = os.path.join(out, "points", label)
        place = ["--dmx-output", folder]
        if label.startswith("dmx-") and os.path.isdir(os.path.join(folder, "checkpoints")):
            place = ["--dmx-resume", folder]  # an interrupted training goes on where it stopped
        runs.append(
            (
                label,
                argv + place + [
                    "--dmx-label",
                    label,
                    "--dmx-results",
                    os.path.join(out, RESULTS_FILE),
                    "--dmx-sensitivity-cache",
                    os.path.join(out, "sensitivity.json"),
                    "--dmx-float-cache",
                    os.path.join(out, "float_nll.json")
                ] + llm_argv))
    return runs


def _point_outputs(points) -> List[Tuple[str, str]]:
    """(label, output folder) of each planned point."""
    outputs = []
    for label, argv in points:
        flag = "--dmx-resume" if "--dmx-resume" in argv else "--dmx-output"
        outputs.append((label, argv[argv.index(flag) + 1]))
    return outputs


def read_results(path: str) -> List[RunRecord]:
    """The records of a results file, of any schema version."""
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [RunRecord.from_json(json.loads(line)) for line in f if line.strip()]


def _typed(record) -> RunRecord:
    """A record as ``RunRecord`` (a results line read elsewhere may be a plain dict)."""
    return record if isinstance(record, RunRecord) else RunRecord.from_json(record)


def _bits(record, average: str) -> Optional[float]:
    bits = _typed(record).bits
    return None if bits is None else bits[average]


def _series(record: Dict) -> str:
    """The line a point belongs to in the plot (runs with a seed other than the default, and
    rotated runs, apart)."""
    typed = _typed(record)
    series = _method_series(typed)
    if typed.weight_rounding:  # GPTQ and its kin on the map: a line of their own
        series += " + " + "+".join(typed.weight_rounding["algorithms"])
    return series + " rotated" if typed.rotation else series


def _method_series(record: RunRecord) -> str:
    method = record.method
    if method.startswith("map:"):  # <series>-<target>.json: one line per series
        name = os.path.splitext(os.path.basename(method[len("map:"):]))[0]
        return re.sub(r"-\d+(\.\d+)?$", "", name)
    seed = record.seed
    seed = f" seed {seed}" if seed not in (None, 0) else ""
    ladder = AUTO_LADDER if record.ladder_auto else record.ladder
    if record.retargeted_from:
        steps = record.retargeted_steps
        trained = f" from {steps} steps" if steps is not None else ""
        return f"dmx retargeted{trained} ({ladder}){seed}"
    if method == "dmx" and (record.init or "low") != "low":  # warm starts apart
        seed = f" from {record.init}{seed}"
    if method == "dmx" and record.steps is not None:  # runs of other lengths apart
        return f"dmx {record.steps} steps ({ladder}){seed}"
    if method in ("kl", "fisher", "dmx"):
        return f"{method} ({ladder}){seed}"
    return method


def _texts(records: List[Dict]) -> List[str]:
    """The --dmx-eval-datasets texts any point was scored on, in a stable order."""
    return sorted({t for r in records for t in (r.get("texts") or {})})


def report_table(records: List[Dict], average: str = HEADLINE) -> str:
    """The Markdown table of every point, with the share of the MXFP4 -> MXFP8 gap closed and
    each --dmx-eval-datasets text's perplexity."""
    uniform = {
        r["label"]: r["quant_ppl"]
        for r in records
        if str(r.get("label", "")).startswith("uniform-")
    }
    low, high = uniform.get("uniform-e2m1"), uniform.get("uniform-e4m3")
    tasks = sorted({t for r in records for t in (r.get("accuracy") or {})})
    texts = _texts(records)
    header = ["point", "method", "target", f"bits ({average})", "bits (simple)", "perplexity"]
    header += ["gap closed"] + [f"{t} ppl" for t in texts] + [f"{t} acc" for t in tasks]
    header += ["search (s)", "total (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    ordered = sorted(
        records, key=lambda r: (_series(r), _bits(r, average) or 99, r.get("target_bits") or 0))
    for r in ordered:
        bits = _bits(r, average)
        simple = _bits(r, "simple")
        gap = "-"
        if low is not None and high is not None and low != high and bits is not None:
            gap = f"{100 * (low - r['quant_ppl']) / (low - high):.1f} %"
        row = [
            r.get("label") or r["method"],
            r["method"],
            "-" if r.get("target_bits") is None else f"{r['target_bits']:g}",
            "-" if bits is None else f"{bits:.3f}",
            "-" if simple is None else f"{simple:.3f}",
            f"{r['quant_ppl']:.3f}",
            gap
        ]
        text_ppl = [_metric(r, f"{t} ppl") for t in texts]
        row += ["-" if ppl is None else f"{ppl:.3f}" for ppl in text_ppl]
        accuracy = r.get("accuracy") or {}
        row += [f"{accuracy[t]['acc']:.4f}" if t in accuracy else "-" for t in tasks]
        row += [f"{r.get('search_time_s') or 0:.0f}", f"{r.get('total_time_s') or 0:.0f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


BASELINES = ("kl", "fisher")


def _same_problem(a: Dict, b: Dict) -> bool:
    """Two points of one budget and seed: same model, ladder, target, average, seed (calibration
    data) and evaluation windows."""
    keys = (
        "model",
        "ladder",
        "target_bits",
        "average",
        "budget_with_scales",
        "seqlen",
        "seed",
        "rotation")
    a, b = _typed(a), _typed(b)
    return all(getattr(a, k) == getattr(b, k) for k in keys) and (
        a.eval_fingerprint is not None and a.eval_fingerprint == b.eval_fingerprint)


def _verdict(stats: Dict) -> str:
    if stats["high"] < 1:
        return "dMX better"
    if stats["low"] > 1:
        return "baseline better"
    return "not separated"


def _paired_on_texts(point: Dict, baseline: Dict, level: float) -> Dict[str, Dict]:
    """The paired ratio on each --dmx-eval-datasets text both points scored on the same
    windows."""
    out = {}
    theirs = baseline.get("texts") or {}
    for text, mine in (point.get("texts") or {}).items():
        other = theirs.get(text)
        if other is None or other["fingerprint"] != mine["fingerprint"]:
            continue
        stats = paired_ratio(mine["window_nll"], other["window_nll"], mine["seqlen"], level=level)
        out[text] = dict(stats, verdict=_verdict(stats))
    return out


def paired_comparisons(records: List[Dict], level: float = 0.95) -> List[Dict]:
    """Each dMX point against the best baseline (kl or fisher, lowest perplexity) at its budget
    and seed, on the same evaluation windows: the perplexity ratio with its paired bootstrap
    interval, and the same on each --dmx-eval-datasets text (``texts``). Points without
    per-window NLLs (older results files) are left out."""
    comparisons = []
    for point in records:
        if point["method"] != "dmx" or not point.get("window_nll"):
            continue
        rivals = [
            r for r in records
            if r["method"] in BASELINES and r.get("window_nll") and _same_problem(point, r)
        ]
        if not rivals:
            continue
        best = min(rivals, key=lambda r: r["quant_ppl"])
        stats = paired_ratio(point["window_nll"], best["window_nll"], point["seqlen"], level=level)
        comparisons.append(
            dict(
                stats,
                point=point,
                baseline=best,
                verdict=_verdict(stats),
                level=level,
                texts=_paired_on_texts(point, best, level)))
    return comparisons


def comparison_table(comparisons: List[Dict]) -> str:
    """Markdown table of ``paired_comparisons``."""
    if not comparisons:
        return ""
    level = f"{100 * comparisons[0]['level']:g} %"
    texts = sorted({t for c in comparisons for t in c["texts"]})
    header = [
        "dMX point",
        "ladder",
        "target",
        "dMX ppl",
        "best baseline",
        "its ppl",
        f"dMX vs baseline [{level} interval]",
        "windows",
        "verdict"
    ] + [f"on {t}" for t in texts]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in comparisons:
        point, base = c["point"], c["baseline"]
        row = [
            point.get("label") or "dmx",
            point["ladder"],
            f"{point['target_bits']:g}",
            f"{point['quant_ppl']:.3f}",
            base.get("label") or base["method"],
            f"{base['quant_ppl']:.3f}",
            _interval(c),
            str(c["windows"]),
            c["verdict"]
        ]
        row += [
            f"{_interval(c['texts'][t])} {c['texts'][t]['verdict']}" if t in c["texts"] else "-"
            for t in texts
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _interval(stats: Dict) -> str:
    ratio, low, high = (f"{100 * (stats[k] - 1):+.1f}" for k in ("ratio", "low", "high"))
    return f"{ratio} % [{low}, {high}]"


def _metric(record: Dict, metric: str, float_line: bool = False) -> Optional[float]:
    """A point's value on one panel of the plot: "perplexity" (the run's own windows),
    "<text> ppl" (an --dmx-eval-datasets text; its float perplexity for the float line) or a
    task's accuracy."""
    if metric == "perplexity":
        return record["quant_ppl"]
    if metric.endswith(" ppl"):
        scores = (record.get("texts") or {}).get(metric[:-len(" ppl")])
        return None if scores is None else scores["float_ppl" if float_line else "quant_ppl"]
    return (record.get("accuracy") or {}).get(metric, {}).get("acc")


def plot_pareto(records: List[Dict], path: str, average: str = HEADLINE, title: str = "") -> str:
    """Perplexity (on the run's windows and on each --dmx-eval-datasets text) and each task's
    accuracy against average bits, one line per method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tasks = sorted({t for r in records for t in (r.get("accuracy") or {})})
    metrics = ["perplexity"] + [f"{t} ppl" for t in _texts(records)] + tasks
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(5.2 * len(metrics) + 2.6, 4.2), squeeze=False)
    colors = plt.get_cmap("tab20").colors  # a colour per line, however many tools are compared
    series: Dict[str, List[Dict]] = {}
    for r in records:
        series.setdefault(_series(r), []).append(r)
    floats = [r for r in records if r["method"] == "float"]
    markers = {"uniform": "s", "mlp8": "D"}
    for column, metric in enumerate(metrics):
        ax = axes[0][column]
        # The float line: the float point's; on a text, every point carries the float score.
        text = metric.endswith(" ppl")
        values = [_metric(r, metric, float_line=True) for r in (records if text else floats)]
        values = [v for v in values if v is not None]
        if values:
            ax.axhline(values[-1], color="black", linestyle=":", label="float")
        for index, (name, points) in enumerate(sorted(series.items())):
            if name == "float":
                continue
            points = sorted(
                (p for p in points if _bits(p, average) is not None),
                key=lambda p: _bits(p, average))
            keep = [(_bits(p, average), _metric(p, metric)) for p in points]
            keep = [(x, y) for x, y in keep if y is not None]
            if not keep:
                continue
            kind = name.split(" ")[0]  # uniform and mlp8 points stand alone, rotated or not
            line = "" if kind in markers else ("--" if name.endswith(" rotated") else "-")
            ax.plot(
                *zip(*keep),
                line + markers.get(kind, "o"),
                label=name,
                markersize=5,
                color=colors[index % len(colors)])
        ax.set_xlabel(f"average bits ({average.replace('_', ' ')})")
        if metric == "perplexity" or text:
            name = f"{metric[:-len(' ppl')]} " if text else ""
            ax.set_ylabel(f"{name}perplexity (log scale)")
            ax.set_yscale("log")
        else:
            ax.set_ylabel(f"{metric} accuracy")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(output: str, average: str = HEADLINE, title: str = "") -> Tuple[str, str]:
    records = read_results(os.path.join(output, RESULTS_FILE))
    if not records:
        raise FileNotFoundError(f"no results in {os.path.join(output, RESULTS_FILE)} yet")
    table = os.path.join(output, "pareto.md")
    with open(table, "w") as f:
        f.write(report_table(records, average) + "\n")
        f.write(
            "\nsearch (s): what finding the formats cost (dMX training, kl / fisher scoring), "
            "the original time also where the scores came from the cache; total (s): the "
            "point's own run.\n")
        comparisons = comparison_table(paired_comparisons(records))
        if comparisons:
            f.write(
                "\nPaired comparison on the same evaluation windows (bootstrap over windows; "
                "negative: dMX has the lower perplexity):\n\n" + comparisons + "\n")
    return table, plot_pareto(records, os.path.join(output, "pareto.png"), average, title)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, llm_argv = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (
        argv, [])
    parser = build_parser()
    args = parser.parse_args(own)
    averages = [w + s for w in config.WEIGHTINGS for s in ("", "_with_scales")]
    if args.average not in averages:
        parser.error(f"--average {args.average!r}: choose one of {', '.join(averages)}")
    llm.log_to_console()
    if not args.report_only:
        if {"kl", "fisher", "dmx"} & set(args.methods) and not args.targets:
            parser.error("--targets is needed for the kl, fisher and dmx points")
        if args.retarget_from is not None and (args.retarget_from not in args.targets or
                                               "dmx" not in args.methods):
            parser.error("--retarget-from must be one of --targets, with the dmx method")
        try:
            for fmt in args.uniform_formats or []:
                element_format(fmt)
        except ValueError as err:
            parser.error(f"--uniform-formats: {err}")
        try:
            if args.ladder != AUTO_LADDER:
                get_ladder(args.ladder)
        except ValueError as err:
            parser.error(f"--ladder: {err}")
        os.makedirs(args.output, exist_ok=True)
        points = plan_points(args, llm_argv)
        # Every point's command line is parsed and checked before the first one runs; the
        # folders of the points that run first may be named by re-targeting ones.
        sources = {os.path.abspath(p) for _, p in _point_outputs(points)}
        parsed = {}
        # The points load the tokenizer, texts and float model once, and each quantizes a copy.
        inputs = llm.RunInputs(keep=True)
        for label, point_argv in points:
            try:
                llm_parser, point_args, extra, defaults = llm.parse(point_argv)
                if extra:
                    raise llm.UsageError(f"unrecognized arguments: {' '.join(extra)}")
                parsed[label] = llm.validate(
                    llm_parser, point_args, defaults, pending=sources, inputs=inputs)
            except ValueError as err:  # UsageError, DataError, ModelError: a message each
                parser.error(f"point {label}: {err}")
        done = {r.get("label") for r in read_results(os.path.join(args.output, RESULTS_FILE))}
        todo = [(label, point_argv) for label, point_argv in points if label not in done]
        logger.info(f"{len(points)} points, {len(points) - len(todo)} already done")
        for index, (label, point_argv) in enumerate(todo):
            logger.info(f"point {index + 1}/{len(todo)}: {label}")
            code = llm.run(point_argv, parsed[label])
            if code != 0:
                print(f"brevitas_dmx_pareto: point {label} failed (exit {code})", file=sys.stderr)
                return code
    try:
        table, plot = write_report(args.output, args.average, args.model)
    except FileNotFoundError as err:
        print(f"brevitas_dmx_pareto: error: {err}", file=sys.stderr)
        return 2
    with open(table) as f:
        print(f.read())
    logger.info(f"wrote {table} and {plot}")
    return 0


def console_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console_main()
