# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""``brevitas_dmx_llm``: Brevitas's ``brevitas_ptq_llm`` plus a ``--dmx`` group.

Without ``--dmx`` the command is ``brevitas_ptq_llm`` (same parser, same YAML ``--config``).
With it, every Linear layer but the LM head gets a learnable MX format (weights and inputs, MX
blocks of 32), the offsets train under the bit budget, the formats are projected exactly onto
the budget, the model is finalized to fixed Brevitas MX quantizers and evaluated.
"""

import argparse
from dataclasses import dataclass
from dataclasses import field
import gc
import json
import logging
import os
import random
import resource
import shlex
import signal
import sys
import threading
import time
from typing import Dict, List, Optional, Tuple

from brevitas.graph.quantize import layerwise_quantize
from brevitas_examples.common.parse_utils import override_defaults
from brevitas_examples.common.parse_utils import parse_args
from datasets import load_dataset
import torch
from torch import nn
from transformers.trainer_utils import get_last_checkpoint

from brevitas_dmx import distributed
import brevitas_dmx as dmx
from brevitas_dmx.baselines import fisher_sensitivity
from brevitas_dmx.baselines import kl_sensitivity
from brevitas_dmx.baselines import linear_layers
from brevitas_dmx.baselines import mlp_high_map
from brevitas_dmx.baselines import unit_scores
from brevitas_dmx.config import AUTO_ROUNDING
from brevitas_dmx.config import HUB_DATASETS
from brevitas_dmx.config import SEARCHING_METHODS
from brevitas_dmx.data import calibration_samples
from brevitas_dmx.data import check_dataset_name
from brevitas_dmx.data import DataError
from brevitas_dmx.data import evaluation_windows
from brevitas_dmx.data import load_text
from brevitas_dmx.data import split_text
from brevitas_dmx.evaluate import format_table
from brevitas_dmx.evaluate import perplexity_of
from brevitas_dmx.evaluate import plot_bits
from brevitas_dmx.evaluate import task_manager
from brevitas_dmx.evaluate import window_nll
from brevitas_dmx.evaluate import windows_fingerprint
from brevitas_dmx.evaluate import zero_shot
from brevitas_dmx.export import export_quark
from brevitas_dmx.export import pack_weights
from brevitas_dmx.export import save_pretrained
from brevitas_dmx.export.quark import check_fused_layers
from brevitas_dmx.export.quark import QUARK_INPUT_FORMATS
from brevitas_dmx.export.quark import QUARK_WEIGHT_FORMATS
from brevitas_dmx.formats import AUTO_LADDER
from brevitas_dmx.formats import DEFAULT_CHAIN
from brevitas_dmx.formats import E8M0_SCALE_BITS
from brevitas_dmx.formats import element_format
from brevitas_dmx.formats import Ladder
from brevitas_dmx.formats import ladder as get_ladder
from brevitas_dmx.formats import ladder_for_target
from brevitas_dmx.functional import enable_compile
from brevitas_dmx.llm_args import build_parser
from brevitas_dmx.llm_args import check_ranges
from brevitas_dmx.llm_args import flag_name
from brevitas_dmx.llm_args import PROG
from brevitas_dmx.model import check_format_map
from brevitas_dmx.model import rounding_for_ladder
from brevitas_dmx.model import set_rounding
from brevitas_dmx.models import load_model
from brevitas_dmx.models import load_tokenizer
from brevitas_dmx.models import ModelError
from brevitas_dmx.models import resolve_model_path
from brevitas_dmx.nn import dmx_linear_map
from brevitas_dmx.quant import ladder_quantizers
from brevitas_dmx.solver import DMXTrainer
from brevitas_dmx.solver import project_model
from brevitas_dmx.solver import ScalingPenalty
from brevitas_dmx.solver import TargetAwarePenalty
from brevitas_dmx.solver import training_arguments
from brevitas_dmx.solver.projection import assign_projection
from brevitas_dmx.solver.projection import budget_problem
from brevitas_dmx.solver.projection import init_offsets
from brevitas_dmx.solver.projection import load_problem
from brevitas_dmx.solver.projection import project_scores
from brevitas_dmx.solver.projection import Projection
from brevitas_dmx.solver.projection import restore_start_offsets
from brevitas_dmx.solver.projection import save_problem
from brevitas_dmx.solver.trainer import load_offsets
from brevitas_dmx.solver.trainer import NonFiniteLossError
from brevitas_dmx.solver.trainer import OFFSETS_FILE
from brevitas_dmx.solver.trainer import offsets_state_dict

# By name: run as ``python -m brevitas_dmx.llm`` this module is __main__.
logger = logging.getLogger("brevitas_dmx.llm")

# A run folder's metrics (written at the end of a run; a re-targeting run reads its source's).
METRICS_FILE = "metrics.json"
# The folder of a run's training checkpoints, inside its output folder.
CHECKPOINTS_DIR = "checkpoints"

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
}

# The rotations a dMX run applies itself: Hadamard (or random orthogonal) rotations fused into
# the weights, which leave a standard model. Online rotations need Brevitas's own pipeline.
DMX_ROTATIONS = ("fused_no_fx",)


class UsageError(ValueError):
    """A bad command line, with a message that names the flag."""


def _dmx_dests(parser) -> List[str]:
    return [a.dest for a in parser._actions if a.dest.startswith("dmx")]


def validate(parser, args, defaults: Optional[Dict] = None, pending=()) -> None:
    """Every check that needs no model or data: runs before anything heavy is loaded.

    ``defaults`` are the parser's defaults before a YAML ``--config`` changed them, so flags set
    in a config count as set. ``pending``: run folders that a sweep fills before this run, which
    ``--dmx-retarget-from`` may name before they hold offsets."""
    defaults = defaults or {a.dest: a.default for a in parser._actions}
    if not _check_mode(parser, args, defaults):
        return
    method, file_map = _check_method(args, pending)
    _check_rotation(args)
    _check_evaluation(args)
    _check_deployment(args, method, file_map)
    _check_run(args)


def _check_mode(parser, args, defaults: Dict) -> bool:
    """Whether the run is a dMX one; refuses dMX flags without --dmx and, with it, the Brevitas
    flags that this command's pipeline does not compose with."""
    dmx_set = [d for d in _dmx_dests(parser) if d != "dmx" and getattr(args, d) != defaults[d]]
    if not args.dmx:
        if dmx_set:
            raise UsageError(
                f"{', '.join(map(flag_name, dmx_set))} need --dmx (add --dmx to learn formats)")
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
            f"with rotations, GPTQ and evaluation: --custom-quantizer "
            f"examples/brevitas_dmx_plugin.py:dmx --fine-tune --custom-trainer "
            f"examples/brevitas_dmx_plugin.py:dmx --dmx_target_bits BITS (see the README).")
    return True


def _check_method(args, pending=()) -> Tuple[str, Optional[Dict]]:
    """The method's own flags: its format or format map, the offsets it re-targets, its budget.
    Returns the method ("map" for a format map) and the format map, read and checked."""
    scale = budget_scale_bits(args)
    try:
        ladder = run_ladder(args, pending)
    except ValueError as err:
        raise UsageError(f"--dmx-ladder: {err}") from None
    args.dmx_ladder_auto = args.dmx_ladder == AUTO_LADDER  # a sweep's points share one series
    # auto takes a target anywhere on its chain: a refusal names the chain's range
    reach, reach_name = ladder, ladder.name
    if args.dmx_ladder_auto and args.dmx_retarget_from is None:
        reach = get_ladder(DEFAULT_CHAIN)
        reach_name = f"auto ({reach.name})"
    args.dmx_ladder = ladder.name  # one name per chain in metrics, results and labels
    if args.dmx_rounding == AUTO_ROUNDING:
        args.dmx_rounding = rounding_for_ladder(ladder)
    low, high = reach.min_bits + scale, reach.max_bits + scale
    file_map = None
    if args.dmx_format_map is not None:
        if args.dmx_method != "dmx":
            raise UsageError(
                f"--dmx-format-map applies a map by itself: drop --dmx-method {args.dmx_method}")
        file_map = read_format_map(args.dmx_format_map)  # its formats, before the model loads
    method = _method(args)
    if method == "uniform":
        if args.dmx_format is None:
            raise UsageError("--dmx-method uniform needs --dmx-format (e.g. mxfp4, e2m3, mxfp8)")
        try:
            element_format(args.dmx_format)
        except ValueError as err:
            raise UsageError(f"--dmx-format: {err}") from None
    elif args.dmx_format is not None:
        raise UsageError("--dmx-format is the format of --dmx-method uniform only")
    if args.dmx_retarget_from is not None:
        _check_retarget(args, method, pending)
    if args.dmx_init != "low" and (method != "dmx" or args.dmx_retarget_from is not None):
        raise UsageError(
            f"--dmx-init {args.dmx_init} is where dMX training starts: it needs --dmx-method dmx "
            f"and no --dmx-retarget-from or --dmx-format-map")
    if method in SEARCHING_METHODS and args.dmx_target_bits is None:
        raise UsageError(
            f"--dmx-method {method} needs --dmx-target-bits, between {low:g} and {high:g} for "
            f"--dmx-ladder {reach_name}")
    if method in SEARCHING_METHODS and not low <= args.dmx_target_bits <= high:
        raise UsageError(
            f"--dmx-target-bits {args.dmx_target_bits:g} is outside what --dmx-ladder "
            f"{reach_name} can reach: {low:g} to {high:g} bits"
            + (" (with scale bits)" if scale else ""))
    if method == "uniform" and args.dmx_target_bits is not None:
        bits = element_format(args.dmx_format).bits + scale
        if bits > args.dmx_target_bits:
            raise UsageError(
                f"--dmx-format {args.dmx_format} needs {bits:g} bits, over --dmx-target-bits "
                f"{args.dmx_target_bits:g}")
    return method, file_map


def budget_scale_bits(args) -> float:
    """The bits per element the budget counts for the E8M0 block scales (0 without them)."""
    return E8M0_SCALE_BITS / 32 if args.dmx_budget_with_scales else 0.0


def run_ladder(args, pending=()) -> Ladder:
    """The ladder of a parsed command line: the one named, or for ``auto`` the default chain's
    two formats around the target (re-targeted offsets keep the ladder they were learned on;
    ``pending``: run folders not written yet). Raises a ValueError on a bad or mismatched name."""
    source = args.dmx_retarget_from
    learned = None
    if source is not None and os.path.abspath(source) not in pending:
        learned = _source_ladder(source)
    if args.dmx_ladder == AUTO_LADDER:
        if learned is not None:
            return learned
        return ladder_for_target(args.dmx_target_bits, budget_scale_bits(args))
    named = get_ladder(args.dmx_ladder)
    if learned is not None and learned.name != named.name:
        raise ValueError(
            f"{named.name}, but the offsets of --dmx-retarget-from {source!r} were learned on "
            f"{learned.name}: name that ladder, or leave --dmx-ladder at auto")
    return named


def _source_ladder(run_dir: str) -> Optional[Ladder]:
    """The ladder a finished run's offsets were learned on, from its args.json (None if absent)."""
    path = os.path.join(run_dir, "args.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        name = json.load(f).get("dmx_ladder")
    return None if name is None else get_ladder(name)


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


def _check_evaluation(args) -> None:
    """The zero-shot tasks exist (locally or in lm-eval) and their folder does."""
    if args.dmx_eval_include is not None and not os.path.isdir(args.dmx_eval_include):
        raise UsageError(f"--dmx-eval-include {args.dmx_eval_include!r}: no such folder")
    if args.dmx_eval_include is not None and args.dmx_eval_tasks is None:
        raise UsageError("--dmx-eval-include needs --dmx-eval-tasks (the task names to run)")
    if args.dmx_eval_tasks is not None:
        try:
            task_manager(_eval_tasks(args), args.dmx_eval_include)
        except ValueError as err:
            raise UsageError(f"--dmx-eval-tasks: {err}") from None


def _check_deployment(args, method: str, file_map: Optional[Dict]) -> None:
    """What the deployment flags need: a quantized model, their extras, Quark's formats."""
    if (args.dmx_save_pretrained or args.dmx_export_qonnx or
            args.dmx_export_quark) and method == "float":
        raise UsageError(
            "--dmx-save-pretrained / --dmx-export-qonnx / --dmx-export-quark need a quantized "
            "model, not --dmx-method float")
    if args.dmx_export_quark:
        _check_quark_export(args, method, file_map)
    if args.dmx_export_qonnx:
        try:
            import onnx  # noqa: F401
            import onnxoptimizer  # noqa: F401
            import qonnx  # noqa: F401
        except ImportError as err:
            raise UsageError(
                f"--dmx-export-qonnx needs the export extra ({err.name} is missing): "
                f"pip install 'brevitas-dmx[export]'") from None


def _check_run(args) -> None:
    """The ranges of the numeric flags, the batch against the processes, the output folder to
    resume, the data set and the model."""
    try:
        check_ranges(args)
    except ValueError as err:
        raise UsageError(str(err)) from None
    for dest in ("nsamples", "seqlen"):
        if not getattr(args, dest) > 0:
            raise UsageError(f"{flag_name(dest)} must be positive, got {getattr(args, dest)}")
    if args.dmx_batch_size % distributed.world_size():
        raise UsageError(
            f"--dmx-batch-size {args.dmx_batch_size} is the global batch: it must be a multiple "
            f"of the {distributed.world_size()} processes")
    if args.dmx_resume is not None and not os.path.isdir(args.dmx_resume):
        raise UsageError(f"--dmx-resume {args.dmx_resume!r}: no such output folder")
    if args.dataset in HUB_DATASETS and args.dataset != "wikitext2":
        raise UsageError(
            f"--dataset {args.dataset} is not available with --dmx yet: use "
            f"wikitext2, enwiki-gensim, news-gensim or a local .txt / .jsonl file")
    check_dataset_name(args.dataset)
    resolve_model_path(args.model)


class _StdoutHandler(logging.StreamHandler):
    """A stream handler on whatever ``sys.stdout`` is when a record is written (a test or a
    notebook may have replaced it since the handler was made)."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


class _ConsoleFormatter(logging.Formatter):
    """``[dMX] message``, or ``[pareto] message`` for the sweep's own messages."""

    def format(self, record: logging.LogRecord) -> str:
        tag = "pareto" if record.name == "brevitas_dmx.pareto" else "dMX"
        return f"[{tag}] {super().format(record)}"


def log_to_console() -> None:
    """The package's progress messages on standard output, as ``[dMX] ...`` lines: rank 0's
    only under several processes (the others' warnings still show). Called once per
    process by the commands; a library user configures ``logging`` as they like."""
    package = logging.getLogger("brevitas_dmx")
    package.setLevel(logging.INFO if distributed.is_main() else logging.WARNING)
    if not any(isinstance(h.formatter, _ConsoleFormatter) for h in package.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(_ConsoleFormatter())
        package.addHandler(handler)
        package.propagate = False


def busy_machine_note(load: float, cores: int, threads: int, environ) -> Optional[str]:
    """Advice for a machine that other jobs already keep busy, where PyTorch would still start a
    thread per core: its threads then spin against the other jobs' (measured: a SmolLM2 step
    took 10x longer than with one thread). None where the advice does not apply."""
    if "OMP_NUM_THREADS" in environ or threads <= 1 or load < cores / 2:
        return None
    return (
        f"this machine is busy (load {load:.1f} on {cores} cores) and PyTorch runs "
        f"{threads} threads: if the run is slow, start it again with OMP_NUM_THREADS=1")


def _eval_tasks(args) -> List[str]:
    return [t.strip() for t in args.dmx_eval_tasks.split(",") if t.strip()]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _texts(args):
    if args.dataset == "wikitext2":
        data = load_dataset("wikitext", "wikitext-2-raw-v1")
        return "".join(data["train"]["text"]), "\n\n".join(data["test"]["text"])
    return split_text(load_text(args.dataset), args.dmx_eval_fraction)


def _layer_map(args):
    """The ``layerwise_quantize`` map: the ladder's learnable quantizers on every Linear."""
    weight, act = ladder_quantizers(args.dmx_ladder)
    weight = weight.let(dmx_scale_rule=args.dmx_scale_rule)
    act = None if args.dmx_weights_only else act.let(dmx_scale_rule=args.dmx_scale_rule)
    return dmx_linear_map(weight, act)


def _peak_memory_bytes(device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _rotation_name(args) -> Optional[str]:
    """The rotation a run applies, as results and caches record it: 'fused_no_fx-had', or None."""
    if args.rotation is None:
        return None
    return f"{args.rotation}-{args.rotation_mode}" + ("-sink" if args.rotation_orphan_sink else "")


def rotate(args, model: nn.Module, calib: List[Dict]) -> float:
    """Rotates ``model`` in place as Brevitas's LLM entrypoint does for --rotation fused_no_fx:
    RMSNorm scales merged into the next layers and orthogonal rotations fused into the weights,
    so the float function is unchanged and the weights' outliers are spread over their blocks.
    Returns the seconds it took."""
    from brevitas_examples.llm.main import fused_rotation_no_fx

    start = time.perf_counter()
    sample = {
        k: calib[0][k][None].to(next(model.parameters()).device)
        for k in ("input_ids", "attention_mask")
    }
    use_cache, model.config.use_cache = model.config.use_cache, True  # the tracer asks for it
    try:
        fused_rotation_no_fx(model, [sample], args)
    finally:
        model.config.use_cache = use_cache
    # The final norm is merged into the LM head and not into the embedding: they differ now,
    # and a checkpoint that still said they are tied would load the wrong head.
    model.config.tie_word_embeddings = False
    return time.perf_counter() - start


def _method(args) -> str:
    return "map" if args.dmx_format_map is not None else args.dmx_method


def _sensitivity(args, model, calib, method: str):
    """Layer scores of the kl / fisher baselines on the float model and the seconds computing
    them took, from the cache if it holds scores for the same model, data and settings (the
    time is then the original computation's, so every point reports the method's full cost)."""
    ladder = get_ladder(args.dmx_ladder)
    key = json.dumps(
        {
            "method": method,
            "model": args.model,
            "dataset": args.dataset,
            "seqlen": args.seqlen,
            "samples": args.dmx_sensitivity_samples,
            "seed": args.seed,
            "formats": [f.name for f in ladder.formats],
            "weights_only": args.dmx_weights_only,
            "scale_rule": args.dmx_scale_rule,
            "quantize_last_layer": args.quantize_last_layer,
            "rotation": _rotation_name(args),
            # the token ids scored (a tokenizer's BOS, a changed text or split change them)
            "calibration":
                windows_fingerprint(
                    torch.stack([s["input_ids"] for s in calib[:args.dmx_sensitivity_samples]]))
        },
        sort_keys=True)
    cached = _read_cache(args.dmx_sensitivity_cache, key)
    if cached is not None:
        logger.info(f"{method} scores from {args.dmx_sensitivity_cache}")
        return cached["scores"], cached["time_s"]
    exclude = _excluded_layers(args)
    score = kl_sensitivity if method == "kl" else fisher_sensitivity
    start = time.perf_counter()
    scores = score(
        model,
        calib[:args.dmx_sensitivity_samples], [f.name for f in ladder.formats],
        layers=linear_layers(model, exclude),
        weights_only=args.dmx_weights_only,
        scale_rule=args.dmx_scale_rule)
    elapsed = time.perf_counter() - start
    _write_cache(args.dmx_sensitivity_cache, key, {"scores": scores, "time_s": elapsed})
    return scores, elapsed


def _read_cache(path: Optional[str], key: str):
    """The entry ``key`` of a JSON cache file (None if there is no file or no such entry)."""
    if not path or not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f).get(key)


def _write_cache(path: Optional[str], key: str, value) -> None:
    """Adds ``key`` to a JSON cache file (rank 0 writes; a no-op without a file)."""
    if not path or not distributed.is_main():
        return
    cache = {}
    if os.path.isfile(path):
        with open(path) as f:
            cache = json.load(f)
    cache[key] = value
    with open(path, "w") as f:
        json.dump(cache, f)


def _float_window_nll(args, model, windows, fingerprint: str, device) -> torch.Tensor:
    """The float model's NLL per evaluation window, from ``--dmx-float-cache`` when it holds
    the same model, dtype, device type, windows and batch size (batching moves the last bits)."""
    key = json.dumps(
        {
            "model": args.model,
            "dtype": args.dtype,
            "device": torch.device(device).type,
            "seqlen": args.seqlen,
            "batch_size": args.dmx_eval_batch_size,
            "rotation": _rotation_name(args),
            "windows": fingerprint
        },
        sort_keys=True)
    cached = _read_cache(args.dmx_float_cache, key)
    if cached is not None:
        logger.info(f"float NLL from {args.dmx_float_cache}")
        return torch.tensor(cached, dtype=torch.float64)
    nll = window_nll(model, windows, args.dmx_eval_batch_size, "float ppl")
    _write_cache(args.dmx_float_cache, key, nll.tolist())
    return nll


def _check_quark_export(args, method: str, file_map: Optional[Dict]) -> None:
    """What ``--dmx-export-quark`` would refuse at the end of the run, refused before the model
    loads: a scale rule other than even, fused layers free to split, formats without an exact
    Quark spelling."""
    flag = "--dmx-export-quark"
    try:
        import ml_dtypes  # noqa: F401
        import safetensors  # noqa: F401
    except ImportError as err:
        raise UsageError(
            f"{flag} needs the quark extra ({err.name} is missing): "
            f"pip install 'brevitas-dmx[quark]'") from None
    if args.dmx_scale_rule != "even":
        raise UsageError(
            f"{flag} needs --dmx-scale-rule even (got {args.dmx_scale_rule}): Quark and vLLM "
            f"quantize inputs with the even rule, so a {args.dmx_scale_rule} model would not be "
            f"served as it was evaluated")
    if method in SEARCHING_METHODS and args.dmx_tie != "qkv-gateup":
        raise UsageError(
            f"{flag} needs the layers a runtime fuses (q/k/v, gate/up) in one format: add "
            f"--dmx-tie qkv-gateup")
    if method == "uniform":
        weights = {element_format(args.dmx_format).name}
        inputs = set(weights)
    elif method == "map":
        parsed = check_format_map(file_map)
        weights = {e["weight"] for e in parsed.values() if "weight" in e}
        inputs = {e["input"] for e in parsed.values() if "input" in e}
        try:  # a map that splits q/k/v or gate/up, before the run rather than after it
            check_fused_layers(
                {
                    n: {
                        "weight": e.get("weight"), "input": e.get("input")
                    } for n, e in parsed.items()
                })
        except ValueError as err:
            raise UsageError(
                f"{flag} with --dmx-format-map {args.dmx_format_map!r}: {err}") from None
    else:
        weights = {f.name for f in get_ladder(args.dmx_ladder).formats}
        inputs = set(weights)
    if args.dmx_weights_only:
        inputs = set()
    bad = sorted(weights - QUARK_WEIGHT_FORMATS) + [
        f"{name} inputs" for name in sorted(inputs - QUARK_INPUT_FORMATS)
    ]
    if bad:
        raise UsageError(
            f"{flag}: Quark checkpoints hold MXFP4 and both MXFP6 as weights and inputs and "
            f"MXFP8 E4M3 as weights only; this run can give {', '.join(bad)}. Use "
            f"--dmx-ladder mxfp6-mxfp4, --dmx-weights-only, or other formats")


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


def _excluded_layers(args) -> Tuple[str, ...]:
    """The Linear layers a run leaves in float: the LM head unless --quantize-last-layer."""
    return () if args.quantize_last_layer else ("lm_head",)


def _check_map_layers(args, model: nn.Module, mapping: Dict) -> None:
    """Raises a ``UsageError`` naming the layers of the ``--dmx-format-map`` file's ``mapping``
    that the loaded model will not quantize, before its float perplexity is measured."""
    try:
        quantized = linear_layers(model, _excluded_layers(args))
    except ValueError:
        raise UsageError(f"--model {args.model}: no Linear layers to quantize") from None
    unknown = [name for name in mapping if name not in quantized]
    if unknown:
        examples = ", ".join(sorted(quantized)[:3])
        raise UsageError(
            f"--dmx-format-map {args.dmx_format_map!r} names layers that {args.model} does not "
            f"quantize: {unknown[:5]}{' ...' if len(unknown) > 5 else ''} (its layers are e.g. "
            f"{examples})")


def _preset_map(args, layer_names: List[str]) -> Dict:
    """The format map of the methods that do not search and take no file: uniform, mlp8."""
    method = _method(args)
    ladder = get_ladder(args.dmx_ladder)
    if method == "uniform":
        return {name: element_format(args.dmx_format).name for name in layer_names}
    return mlp_high_map(layer_names, ladder.formats[0].name, ladder.formats[-1].name)


def _train(args, model, calib, out_dir, weighting_kwargs) -> str:
    """dMX proper: trains the offsets under the budget penalty (resumable). Returns how the
    training was parallelized: accelerate's distributed type (NO, MULTI_CPU, MULTI_GPU, FSDP)."""

    if args.dmx_regularizer == "target":
        regularizer = TargetAwarePenalty(args.dmx_target_bits, args.dmx_lambda, **weighting_kwargs)
    else:
        regularizer = ScalingPenalty(args.dmx_lambda, **weighting_kwargs)
    set_rounding(model, args.dmx_rounding)
    if args.dmx_compile:
        enable_compile(True)
    checkpoints = os.path.join(out_dir, CHECKPOINTS_DIR)
    training_args = training_arguments(
        checkpoints,
        args.dmx_steps,
        args.dmx_batch_size,
        args.dmx_lr,
        args.seed,
        gradient_accumulation_steps=args.dmx_grad_accum)
    trainer = DMXTrainer(
        model,
        training_args,
        regularizer,
        optimizer_name=args.dmx_optimizer,
        temp_start=args.dmx_temp_start,
        temp_end=args.dmx_temp_end,
        temp_delay=args.dmx_temp_delay,
        reuse_quantized_weights=not args.dmx_recompute_weights,
        train_dataset=calib)
    resume = get_last_checkpoint(
        checkpoints) if args.dmx_resume and os.path.isdir(checkpoints) else None
    if resume:
        logger.info(f"resuming from {resume}")
    trainer.train(resume_from_checkpoint=resume)
    offsets = offsets_state_dict(model)  # identical on every rank (DMXTrainer.train checks)
    if distributed.is_main():
        torch.save(offsets, os.path.join(out_dir, OFFSETS_FILE))
        save_problem(budget_problem(model), out_dir)
    return str(trainer.accelerator.distributed_type.value)


@dataclass
class Run:
    """What the stages of one run share: its settings, data, model and metrics so far."""
    args: argparse.Namespace
    method: str  # a --dmx-method, or "map" for --dmx-format-map
    out_dir: str
    device: torch.device
    started: float
    tokenizer: object = None
    calib: List[Dict] = field(default_factory=list)
    windows: Optional[torch.Tensor] = None
    model: Optional[nn.Module] = None
    file_map: Optional[Dict] = None
    metrics: Dict = field(default_factory=dict)


def run_dmx(args) -> Dict:
    """The whole job of one method, in stages: start, load, evaluate the float model, quantize,
    the uniform baselines, search (the method's own stage, ``SEARCHES``), evaluate, finalize,
    report and deploy. Returns the metrics it also writes to ``--dmx-output``."""
    run = _start(args)
    _load(run)
    float_nll = _evaluate_float(run)
    if run.method == "float":
        run.metrics.update(
            quant_ppl=run.metrics["float_ppl"], window_nll=float_nll.tolist(), search_time_s=0.0)
        _zero_shot(args, run.model, run.tokenizer, run.metrics)
        return _finish(run, None)
    scores, search_time = None, 0.0
    if run.method in ("kl", "fisher"):  # scored on the float model, before it is quantized
        scores, search_time = _sensitivity(args, run.model, run.calib, run.method)
    elif run.method == "dmx" and args.dmx_init == "fisher":  # the warm start's scores
        scores, search_time = _sensitivity(args, run.model, run.calib, "fisher")
    layers = _quantize(run)
    if run.method == "dmx" and not args.dmx_skip_baselines:
        _uniform_baselines(run, layers)
    search_start = time.perf_counter()
    projection = SEARCHES[run.method](run, layers, scores)
    run.metrics["search_time_s"] = search_time + time.perf_counter() - search_start
    _evaluate_quantized(run)
    return _finish(run, _finalize(run, projection))


def _start(args) -> Run:
    """The processes, the output folder (with the run's arguments), the seed and the device."""
    started = time.perf_counter()
    out_dir = args.dmx_resume or args.dmx_output
    distributed.setup()  # under accelerate launch / torchrun: one process per device
    os.makedirs(out_dir, exist_ok=True)
    if distributed.is_main():
        with open(os.path.join(out_dir, "args.json"), "w") as f:
            json.dump(vars(args), f, indent=1, default=str)
    _seed_everything(args.seed)
    device = distributed.device()
    note = busy_machine_note(
        os.getloadavg()[0], os.cpu_count(), torch.get_num_threads(), os.environ)
    if note and device.type == "cpu":
        logger.info(note)
    return Run(args, _method(args), out_dir, device, started)


def _load(run: Run) -> None:
    """The tokenizer, calibration samples, evaluation windows and float model; the format map
    checked against the model's layers; the metrics that describe the run."""
    args = run.args
    logger.info(f"data: {args.dataset}")
    run.tokenizer = load_tokenizer(args.model)
    calib_text, eval_text = _texts(args)
    run.calib = calibration_samples(
        run.tokenizer, calib_text, args.nsamples, args.seqlen, args.seed)
    run.windows = evaluation_windows(run.tokenizer, eval_text, args.seqlen, args.dmx_eval_windows)
    logger.info(
        f"{len(run.calib)} calibration samples and {len(run.windows)} evaluation windows of "
        f"{args.seqlen} tokens")
    logger.info(f"model: {args.model}")
    run.model = load_model(args.model, args.dtype).to(run.device)
    rotation_time = None
    if args.rotation is not None:
        logger.info(f"rotating the model: {_rotation_name(args)}")
        rotation_time = rotate(args, run.model, run.calib)
    if run.method == "map":  # read once here, after validate() checked its formats
        run.file_map = read_format_map(args.dmx_format_map)
        _check_map_layers(args, run.model, run.file_map)
    run.metrics = {
        "model": args.model,
        "dataset": args.dataset,
        "seqlen": args.seqlen,
        "method": run.method if run.method != "map" else f"map:{args.dmx_format_map}",
        "target_bits": args.dmx_target_bits,
        "ladder": args.dmx_ladder,
        "ladder_auto": getattr(args, "dmx_ladder_auto", False),
        "rounding": args.dmx_rounding,
        "average": args.dmx_average,
        "budget_with_scales": args.dmx_budget_with_scales,
        "rotation": _rotation_name(args),
        "rotation_time_s": rotation_time,
        "eval_windows": len(run.windows),
        "eval_fingerprint": windows_fingerprint(run.windows)
    }


def _evaluate_float(run: Run) -> torch.Tensor:
    """The float model's NLL per window (from the cache where it has them) and perplexity."""
    float_nll = _float_window_nll(
        run.args, run.model, run.windows, run.metrics["eval_fingerprint"], run.device)
    run.metrics["float_ppl"] = perplexity_of(float_nll, run.args.seqlen)
    logger.info(f"float perplexity {run.metrics['float_ppl']:.3f}")
    return float_nll


def _quantize(run: Run) -> List[Tuple[str, nn.Module]]:
    """Learnable MX quantizers on every Linear layer but the excluded ones; fused layers tied
    as asked. Returns the layers with a learnable format."""
    args = run.args
    blacklist = list(_excluded_layers(args))
    # Brevitas builds the input quantizers on the CPU: move the new offsets to the model's device.
    run.model = layerwise_quantize(
        run.model, _layer_map(args), name_blacklist=blacklist).to(run.device)
    layers = dmx.dmx_layers(run.model)
    if not layers:
        raise UsageError(f"--model {args.model}: no Linear layers to quantize")
    if args.dmx_tie != "none":
        dmx.tie_offsets(run.model, dmx.tie_groups(run.model, args.dmx_tie))
    logger.info(
        f"{len(layers)} layers with a learnable format, "
        f"{len(dmx.dmx_offsets(run.model))} offsets")
    return layers


def _uniform_baselines(run: Run, layers) -> None:
    """The perplexity of each format of the ladder on every layer: the uniform points a mixed
    one must beat (a middle format, such as MXFP6, can beat mixes of the ends)."""
    ladder = get_ladder(run.args.dmx_ladder)
    for fmt in ladder.formats:
        dmx.apply_format_map(run.model, {name: fmt.name for name, _ in layers})
        key = _uniform_key(fmt)
        run.metrics[key] = perplexity_of(
            window_nll(run.model, run.windows, run.args.dmx_eval_batch_size, key), run.args.seqlen)
        logger.info(f"uniform {fmt.mx_name.upper()} ({fmt.name}) perplexity {run.metrics[key]:.3f}")
    dmx.clear_format_pins(run.model)


def _weighting(args) -> Dict:
    """The average a budget binds, as ``average_bits`` and the projections take it."""
    return dict(weighting=args.dmx_average, include_scale_bits=args.dmx_budget_with_scales)


def _search_dmx(run: Run, layers, scores) -> Projection:
    """dMX: the offsets trained under the budget (or re-used from another run), then projected
    exactly onto it."""
    args, metrics = run.args, run.metrics
    if args.dmx_retarget_from:
        load_offsets(
            run.model,
            torch.load(os.path.join(args.dmx_retarget_from, OFFSETS_FILE), map_location="cpu"))
        restore_start_offsets(run.model, load_problem(args.dmx_retarget_from))
        metrics["retargeted_from"] = os.path.abspath(args.dmx_retarget_from)
        metrics["retargeted_steps"] = _source_train_steps(args.dmx_retarget_from)
        logger.info(f"offsets learned in {args.dmx_retarget_from}, re-projected (no training)")
    else:
        metrics["init"] = args.dmx_init
        if scores is not None:  # --dmx-init fisher
            init_offsets(run.model, _score_projection(run, scores))
            logger.info("offsets start on the Fisher baseline's formats for the budget")
        train_start = time.perf_counter()
        metrics["parallelism"] = _train(args, run.model, run.calib, run.out_dir, _weighting(args))
        metrics["train_time_s"] = time.perf_counter() - train_start
        metrics["train_steps"] = args.dmx_steps
        metrics["train_grad_accum"] = args.dmx_grad_accum
    run.model.eval()
    metrics["learned_avg_bits"] = dmx.bits_report(run.model)[args.dmx_average]
    projection = project_model(run.model, args.dmx_target_bits, **_weighting(args))
    metrics["lowered_offsets"] = projection.lowered
    logger.info(
        f"projection: {projection.average:.4g} bits for a {args.dmx_target_bits:g}-bit budget; "
        f"{projection.lowered} of {len(projection.betas)} offsets ended below their start and "
        "get no format above it")
    return projection


def _search_sensitivity(run: Run, layers, scores) -> Projection:
    """kl (greedy, as the paper's baseline) and fisher (exact knapsack) over layer scores."""
    projection = _score_projection(run, scores, "greedy" if run.method == "kl" else "knapsack")
    assign_projection(run.model, projection)
    return projection


def _score_projection(run: Run, scores, solver: str = "knapsack") -> Projection:
    """The formats that minimize the summed layer ``scores`` (kl or fisher) under the run's
    budget: the kl / fisher baselines' choice, and the start of --dmx-init fisher."""
    problem = budget_problem(run.model)
    return project_scores(
        problem,
        unit_scores(problem, scores),
        run.args.dmx_target_bits,
        solver=solver,
        **_weighting(run.args))


def _search_preset(run: Run, layers, scores) -> None:
    """uniform, mlp8 and a format map: formats set, not searched."""
    preset = run.file_map if run.method == "map" else _preset_map(run.args, [n for n, _ in layers])
    dmx.apply_format_map(run.model, preset)


# The search stage of each method: (run, learnable layers, float-model scores) -> the
# projection onto the budget, or None where the formats are set rather than searched.
SEARCHES = {
    "dmx": _search_dmx,
    "kl": _search_sensitivity,
    "fisher": _search_sensitivity,
    "uniform": _search_preset,
    "mlp8": _search_preset,
    "map": _search_preset,
}


def _evaluate_quantized(run: Run) -> None:
    """Perplexity (kept per window, for paired comparisons) and zero-shot accuracy, with the
    learnable quantizers on their discrete formats: bit-identical to the finalized model (checked
    in ``_finalize``) and faster, as they quantize each frozen weight only once."""
    run.model.eval()
    quant_nll = window_nll(
        run.model, run.windows, run.args.dmx_eval_batch_size, f"{run.method} ppl")
    run.metrics["window_nll"] = quant_nll.tolist()
    run.metrics["quant_ppl"] = perplexity_of(quant_nll, run.args.seqlen)
    _zero_shot(run.args, run.model, run.tokenizer, run.metrics)


def _finalize(run: Run, projection: Optional[Projection]) -> Dict[str, float]:
    """Fixed Brevitas MX quantizers in place of the learnable ones, checked to give the evaluated
    logits and to meet the budget. Returns the deployed model's bits report."""
    args, model = run.args, run.model
    with torch.no_grad():
        reference = model(input_ids=run.windows[:1].to(run.device)).logits
        dmx.finalize(model)
        if not torch.equal(model(input_ids=run.windows[:1].to(run.device)).logits, reference):
            raise RuntimeError("the finalized model's logits differ from the evaluated ones")
    report = dmx.bits_report(model)
    if args.dmx_target_bits is not None:
        achieved = report[args.dmx_average +
                          ("_with_scales" if args.dmx_budget_with_scales else "")]
        if achieved > args.dmx_target_bits + 1e-9:
            raise UsageError(
                f"the {run.method} formats take {achieved:.4g} bits ({args.dmx_average} "
                f"average), over --dmx-target-bits {args.dmx_target_bits:g}")
    if projection is not None and projection.average > args.dmx_target_bits + 1e-9:
        raise RuntimeError(
            f"the projection's average {projection.average} is over the target "
            f"{args.dmx_target_bits}")
    return report


def _zero_shot(args, model, tokenizer, metrics) -> None:
    if args.dmx_eval_tasks:
        eval_start = time.perf_counter()
        metrics["accuracy"] = zero_shot(
            model,
            tokenizer,
            _eval_tasks(args),
            include=args.dmx_eval_include,
            limit=args.dmx_eval_limit,
            batch_size=args.dmx_eval_batch_size)
        metrics["zero_shot_time_s"] = time.perf_counter() - eval_start


def _deploy(args, model, tokenizer, metrics) -> List[str]:
    """The checkpoint, packed weights, QONNX graph and Quark checkpoint the deployment flags ask
    for."""
    written = []
    if args.dmx_save_pretrained:
        save_pretrained(model, args.dmx_save_pretrained)
        packed = pack_weights(
            model, os.path.join(args.dmx_save_pretrained, "packed_weights.safetensors"))
        metrics["packed_weight_bytes"] = packed["payload_bytes"]
        written.append(args.dmx_save_pretrained)
    if args.dmx_export_qonnx:
        from brevitas_dmx.export import export_causal_lm_qonnx  # the export extra (onnx)
        export_causal_lm_qonnx(model, args.dmx_export_qonnx, seqlen=args.seqlen)
        written.append(args.dmx_export_qonnx)
    if args.dmx_export_quark:
        try:
            export_quark(model, args.dmx_export_quark, tokenizer)
        except ValueError as err:
            raise UsageError(f"--dmx-export-quark: {err}") from None
        written.append(args.dmx_export_quark)
    return written


def _finish(run: Run, report: Optional[Dict[str, float]]) -> Dict:
    """The bits and the gap closed into the metrics; on rank 0 the deployment files, the output
    folder's files, the results line and the printed report."""
    args, metrics = run.args, run.metrics
    fmap = None
    if report is not None:
        fmap = dmx.format_map(run.model)
        metrics["avg_bits"] = report[args.dmx_average]
        metrics["avg_bits_with_scales"] = report[args.dmx_average + "_with_scales"]
        metrics["budget_binds"] = args.dmx_average + (
            " with scales" if args.dmx_budget_with_scales else " without scales")
        metrics["bits"] = report
        metrics["format_counts"] = dmx.format_counts(fmap)
    ladder = get_ladder(args.dmx_ladder)
    low_key, high_key = _uniform_key(ladder.formats[0]), _uniform_key(ladder.formats[-1])
    if low_key in metrics and metrics[low_key] != metrics[high_key]:
        metrics["gap_closed"] = (metrics[low_key]
                                 - metrics["quant_ppl"]) / (metrics[low_key] - metrics[high_key])
    metrics["peak_mem_bytes"] = _peak_memory_bytes(run.device)
    metrics["device"] = str(run.device)
    metrics["total_time_s"] = time.perf_counter() - run.started
    metrics.update(distributed.summary())
    if not distributed.is_main():  # every rank holds the same result; rank 0 writes it
        return metrics
    results = args.dmx_results or os.path.join(run.out_dir, "results.jsonl")
    try:
        deployed = _deploy(args, run.model, run.tokenizer, metrics) if fmap is not None else []
    finally:  # the evaluated run is kept even where a deployment is refused
        with open(os.path.join(run.out_dir, METRICS_FILE), "w") as f:
            json.dump(metrics, f, indent=1)
        if fmap is not None:
            _write_format_map(run, fmap)
        append_result(results, metrics, args)
    print(_summary(metrics))
    logger.info(f"{_written_summary(run.out_dir, deployed)}; appended to {results}")
    return metrics


def _write_format_map(run: Run, fmap: Dict) -> None:
    """format_map.json, the bits-per-layer plot and the printed format table."""
    args = run.args
    with open(os.path.join(run.out_dir, "format_map.json"), "w") as f:
        json.dump(fmap, f, indent=1)
    target = f" at {args.dmx_target_bits:g} bits" if args.dmx_target_bits else ""
    plot_bits(
        fmap,
        os.path.join(run.out_dir, "bits_per_layer.png"),
        f"{args.model}: {run.metrics['method']}{target} ({args.dmx_average})")
    print(format_table(fmap))


def _written_summary(out_dir: str, deployed: List[str]) -> str:
    """What the output folder holds now (the checkpoints and the offsets too), and the paths
    of ``--dmx-save-pretrained``, ``--dmx-export-qonnx`` and ``--dmx-export-quark`` outside it."""
    held = sorted(
        entry + ("/" if os.path.isdir(os.path.join(out_dir, entry)) else "")
        for entry in os.listdir(out_dir))
    folder = os.path.abspath(out_dir)
    outside = [path for path in deployed if not os.path.abspath(path).startswith(folder + os.sep)]
    return f"output folder {out_dir}: {', '.join(held)}" + "".join(f"; wrote {p}" for p in outside)


def _source_train_steps(run_dir: str) -> Optional[int]:
    """How long the run whose offsets are re-targeted trained (None if it kept no metrics)."""
    try:
        with open(os.path.join(run_dir, METRICS_FILE)) as f:
            return json.load(f).get("train_steps")
    except (OSError, ValueError):
        return None


def append_result(path: str, metrics: Dict, args) -> None:
    """One JSON line per run: what a sweep needs to draw its table and plot."""
    record = {
        key: metrics.get(key) for key in (
            "model", "dataset", "method", "ladder", "ladder_auto", "target_bits", "average",
            "budget_with_scales", "float_ppl", "quant_ppl", "gap_closed", "accuracy", "bits",
            "format_counts", "search_time_s", "zero_shot_time_s", "total_time_s", "device",
            "retargeted_from", "retargeted_steps", "init", "rotation", "eval_windows",
            "eval_fingerprint", "window_nll")
    }
    record.update(
        label=args.dmx_label,
        seed=args.seed,
        seqlen=args.seqlen,
        nsamples=args.nsamples,
        steps=args.dmx_steps if "train_steps" in metrics else None,
        regularizer=args.dmx_regularizer,
        rounding=args.dmx_rounding,
        output=os.path.abspath(args.dmx_resume or args.dmx_output),
        finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


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
    if "avg_bits" in metrics:
        target = metrics["target_bits"]
        label = f"{metrics['method']} ({metrics['average']}" + (
            f", target {target:g})" if target is not None else ")")
        lines.append(
            f"| {label} | {metrics['quant_ppl']:.3f} | {metrics['avg_bits']:.3f} "
            f"| {metrics['avg_bits_with_scales']:.3f} |")
    if "gap_closed" in metrics:
        lines.append(
            f"\nShare of the low->high format perplexity gap closed: "
            f"{100 * metrics['gap_closed']:.1f} %")
    for task, value in (metrics.get("accuracy") or {}).items():
        lines.append(f"Zero-shot {task}: accuracy {value['acc']:.4f}")
    lines.append(
        f"Search time {metrics['search_time_s']:.1f} s, total {metrics['total_time_s']:.1f} s, "
        f"peak memory {metrics['peak_mem_bytes'] / 2**30:.2f} GiB")
    return "\n".join(lines)


def interruption_note(argv: List[str], args) -> str:
    """The one line an interrupted run ends with: where its last checkpoint is and the command
    that resumes it (the same command, with ``--dmx-resume`` on its output folder), or the
    command to run again where there is nothing to resume."""
    again = f"run again: {shlex.join([PROG] + argv)}"
    if args.dmx_retarget_from is not None:  # re-projects learned offsets: nothing trains
        return f"{PROG}: interrupted; {again}"
    out_dir = args.dmx_resume or args.dmx_output
    checkpoints = os.path.join(out_dir, CHECKPOINTS_DIR)
    last = get_last_checkpoint(checkpoints) if os.path.isdir(checkpoints) else None
    if last is None:
        return f"{PROG}: interrupted before the first checkpoint in {checkpoints}; {again}"
    resume = shlex.join([PROG] + (argv if args.dmx_resume else argv + ["--dmx-resume", out_dir]))
    return f"{PROG}: interrupted; last checkpoint {last}; resume with: {resume}"


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the run is, so that it ends like Ctrl-C."""


def _raise_terminated(signum, frame):
    raise _Terminated()


def _restore_sigterm(installed: bool, previous) -> None:
    """The SIGTERM handler found before the run (the default where it was set outside Python)."""
    if installed:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def parse(argv: List[str]):
    """(parser, arguments, unknown arguments, the parser's defaults before a YAML ``--config``)
    of a ``brevitas_dmx_llm`` command line, as Brevitas parses it."""
    parser = build_parser()
    defaults = {a.dest: a.default for a in parser._actions}
    args, extra_args = parse_args(parser, argv, override_defaults=override_defaults(argv))
    return parser, args, extra_args, defaults


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser, args, extra_args, defaults = parse(argv)
        validate(parser, args, defaults)
        if not args.dmx:
            # Brevitas's pipeline imports its ONNX export, an optional extra of a dMX run.
            from brevitas_examples.llm.main import quantize_llm
            quantize_llm(args, extra_args)
            return 0
        if extra_args:
            raise UsageError(f"unrecognized arguments: {' '.join(extra_args)}")
    except (UsageError, DataError, ModelError, FileNotFoundError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    return run(argv, args)


def run(argv: List[str], args) -> int:
    """A checked dMX command line's run (``run_dmx``) as a command: errors as one line, an
    interruption as the line that resumes it (``argv``, the command line, is what it repeats).
    Returns the exit code."""
    log_to_console()
    # Only the main thread may set a handler (a sweep may call this from another thread).
    catch_term = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if catch_term else None
    interrupted = None
    try:
        run_dmx(args)
    except (UsageError, DataError, ModelError, NonFiniteLossError, FileNotFoundError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interruption:
        _restore_sigterm(catch_term, previous)  # a second SIGTERM now ends the process
        terminated = isinstance(interruption, _Terminated)
        interrupted = 128 + (signal.SIGTERM if terminated else signal.SIGINT)
    finally:
        _restore_sigterm(catch_term, previous)
    if interrupted is None:
        return 0
    # The abandoned run's progress bars close (and draw themselves once more) when it is
    # collected: collect it now, so that the note is the last line.
    gc.collect()
    if distributed.is_main():
        print(f"\n{interruption_note(argv, args)}", file=sys.stderr)
    return interrupted


if __name__ == "__main__":
    sys.exit(main())
