# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The stages of one dMX run: start, load, evaluate the float model, quantize, the uniform
baselines, search (the method's own hook), evaluate, finalize, report and deploy."""

from dataclasses import dataclass
from dataclasses import field
import json
import logging
import os
import random
import resource
import time
from typing import Dict, List, Optional

import torch
from torch import nn

from brevitas_dmx import distributed
import brevitas_dmx as dmx
from brevitas_dmx.config import DeployTarget
from brevitas_dmx.console import busy_machine_note
from brevitas_dmx.evaluate import perplexity_of
from brevitas_dmx.evaluate import window_nll
from brevitas_dmx.evaluate import windows_fingerprint
from brevitas_dmx.evaluate import zero_shot
from brevitas_dmx.export.vllm_quark import check_format_map_served
from brevitas_dmx.llm.cache import float_window_nll
from brevitas_dmx.llm.deploy import deploy
from brevitas_dmx.llm.inputs import RunInputs
from brevitas_dmx.llm.plan import ARGS_FILE
from brevitas_dmx.llm.plan import eval_tasks
from brevitas_dmx.llm.plan import RunPlan
from brevitas_dmx.llm.plan import UsageError
from brevitas_dmx.llm.record import RunRecord
from brevitas_dmx.llm.report import append_result
from brevitas_dmx.llm.report import summary
from brevitas_dmx.llm.report import uniform_stem
from brevitas_dmx.llm.report import write_format_map
from brevitas_dmx.llm.report import write_metrics
from brevitas_dmx.llm.report import written_summary
from brevitas_dmx.llm.rotation import rotate
from brevitas_dmx.llm.texts import eval_seqlen
from brevitas_dmx.llm.texts import FLOAT
from brevitas_dmx.llm.texts import QUANT
from brevitas_dmx.llm.texts import TextScores
from brevitas_dmx.llm.weight_rounding import compare_with_rtn
from brevitas_dmx.llm.weight_rounding import optimize_run_weights
from brevitas_dmx.pipeline import BudgetError
from brevitas_dmx.pipeline import finalize_checked
from brevitas_dmx.pipeline import quantize_model

logger = logging.getLogger("brevitas_dmx.llm")


@dataclass
class Run:
    """What the stages of one run share: its plan, data, model and record so far."""
    plan: RunPlan
    device: torch.device
    started: float
    record: RunRecord = field(default_factory=RunRecord)
    tokenizer: object = None
    calib: List[Dict] = field(default_factory=list)
    windows: Optional[torch.Tensor] = None
    model: Optional[nn.Module] = None
    texts: Optional[TextScores] = None  # --dmx-eval-datasets

    @property
    def args(self):
        return self.plan.args

    @property
    def metrics(self) -> Dict:
        """The method hooks' measurements beyond the record's own (merged at the end)."""
        return self.record.extras

    def log(self, message: str) -> None:
        logger.info(message)


def run_dmx(plan: RunPlan) -> RunRecord:
    """The whole job of one method, in stages. Returns the record it also writes to the
    output folder."""
    run = _start(plan)
    _load(run)
    float_nll = _evaluate_float(run)
    method = plan.method
    if not method.quantizes:
        run.record.quant_ppl = run.record.float_ppl
        run.record.window_nll = float_nll.tolist()
        run.record.search_time_s = 0.0
        if run.texts is not None:
            run.record.texts = run.texts.report(FLOAT)
        _zero_shot(run)
        return _finish(run, None)
    scores, search_time = method.float_scores(run)  # on the float model, before quantizing
    layers = _quantize(run)
    if method.uniform_baselines and not plan.args.dmx_skip_baselines:
        _uniform_baselines(run, layers)
    search_start = time.perf_counter()
    projection = method.search(run, layers, scores)
    run.record.search_time_s = search_time + time.perf_counter() - search_start
    optimize = bool(plan.weight_optimizers)
    _evaluate_quantized(run, zero_shot=not optimize)
    report = _finalize(run, projection)
    if optimize:  # on the finalized model: each layer rounded in its final format
        optimize_run_weights(run)
        _evaluate_quantized(run)
        compare_with_rtn(run)
    return _finish(run, report)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _start(plan: RunPlan) -> Run:
    """The processes, the output folder (with the run's arguments), the seed and the device."""
    started = time.perf_counter()
    distributed.setup()  # under accelerate launch / torchrun: one process per device
    os.makedirs(plan.out_dir, exist_ok=True)
    if distributed.is_main():
        with open(os.path.join(plan.out_dir, ARGS_FILE), "w") as f:
            json.dump(plan.resolved_args(), f, indent=1, default=str)
    _seed_everything(plan.args.seed)
    device = distributed.device()
    note = busy_machine_note(
        os.getloadavg()[0], os.cpu_count(), torch.get_num_threads(), os.environ)
    if note and device.type == "cpu":
        logger.info(note)
    top = plan.ladder.max_bits + plan.scale_bits
    if plan.deploy != DeployTarget.NONE and plan.target_bits and plan.target_bits > top:
        logger.info(
            f"--dmx-deploy {plan.deploy}: the served formats take at most {top:g} bits, so "
            f"the {plan.target_bits:g}-bit budget does not bind")
    if plan.args.seqlen is None:
        logger.info(
            f"--seqlen not set: windows of {plan.seqlen} tokens on this {device.type} "
            f"(set --seqlen to change)")
    return Run(plan, device, started)


def _load(run: Run) -> None:
    """The tokenizer, calibration samples, evaluation windows and float model; the method's
    checks against the model; the record's description of the run."""
    plan, args = run.plan, run.plan.args
    inputs = plan.inputs or RunInputs()
    logger.info(f"data: {args.dataset}")
    run.tokenizer = inputs.tokenizer(args.model)
    calib_text, eval_text = inputs.texts(args.dataset, args.dmx_eval_fraction)
    run.calib, run.windows = inputs.windows(
        run.tokenizer, calib_text, eval_text, args.nsamples, plan.seqlen, args.seed,
        args.dmx_eval_windows)
    logger.info(
        f"{len(run.calib)} calibration samples and {len(run.windows)} evaluation windows of "
        f"{plan.seqlen} tokens")
    logger.info(f"model: {args.model}")
    run.model = inputs.model(args.model, args.dtype, run.device)
    if args.dmx_eval_datasets:
        seqlen = eval_seqlen(args, run.model)
        run.texts = TextScores(
            {
                name:
                    inputs.eval_windows(
                        run.tokenizer,
                        name,
                        args.dmx_eval_fraction,
                        seqlen,
                        args.dmx_eval_text_windows) for name in args.dmx_eval_datasets
            })
        logger.info(
            f"{len(args.dmx_eval_datasets)} more texts to score, windows of {seqlen} tokens: "
            + ", ".join(f"{n} ({len(w)})" for n, w in run.texts.windows.items()))
    if plan.inputs is not None:  # a shared model skipped the load's random draws
        _seed_everything(args.seed)
    rotation_time = None
    if args.rotation is not None:
        logger.info(f"rotating the model: {plan.rotation}")
        rotation_time = rotate(args, run.model, run.calib)
    plan.method.after_load(run)
    run.record = RunRecord(
        model=args.model,
        dataset=args.dataset,
        seqlen=plan.seqlen,
        method=plan.method.label(plan),
        target_bits=args.dmx_target_bits,
        ladder=plan.ladder.name,
        ladder_auto=plan.ladder_auto,
        rounding=plan.rounding,
        average=args.dmx_average,
        budget_with_scales=args.dmx_budget_with_scales,
        rotation=plan.rotation,
        rotation_time_s=rotation_time,
        eval_windows=len(run.windows),
        eval_fingerprint=windows_fingerprint(run.windows))


def _evaluate_float(run: Run) -> torch.Tensor:
    """The float model's NLL per window (from the cache where it has them) and perplexity."""
    float_nll = float_window_nll(run.plan, run.model, run.windows, run.device)
    run.record.float_ppl = perplexity_of(float_nll, run.plan.seqlen)
    logger.info(f"float perplexity {run.record.float_ppl:.3f}")
    if run.texts is not None:
        run.texts.score(run, run.model, FLOAT)
    return float_nll


def _quantize(run: Run):
    """Learnable MX quantizers on every Linear layer but the excluded ones; fused layers tied
    as asked. Returns the layers with a learnable format."""
    plan, args = run.plan, run.plan.args
    try:
        run.model, layers = quantize_model(
            run.model,
            plan.ladder,
            plan.scale_rule,
            args.dmx_weights_only,
            plan.tie,
            plan.excluded_layers)
    except ValueError:
        raise UsageError(f"--model {args.model}: no Linear layers to quantize") from None
    return layers


def _uniform_baselines(run: Run, layers) -> None:
    """The perplexity of each format of the ladder on every layer: the uniform points a mixed
    one must beat (a middle format, such as MXFP6, can beat mixes of the ends)."""
    for fmt in run.plan.ladder.formats:
        dmx.apply_format_map(run.model, {name: fmt.name for name, _ in layers})
        stem = uniform_stem(fmt)
        nll = window_nll(
            run.model, run.windows, run.args.dmx_eval_batch_size, RunRecord.uniform_key(stem))
        run.record.uniform[stem] = perplexity_of(nll, run.plan.seqlen)
        if run.texts is not None:
            run.texts.score(run, run.model, RunRecord.uniform_key(stem)[:-len("_ppl")])
        logger.info(
            f"uniform {fmt.mx_name.upper()} ({fmt.name}) perplexity "
            f"{run.record.uniform[stem]:.3f}")
    dmx.clear_format_pins(run.model)


def _evaluate_quantized(run: Run, zero_shot: bool = True) -> None:
    """Perplexity (kept per window, for paired comparisons) and zero-shot accuracy. After the
    search the learnable quantizers sit on their discrete formats: bit-identical to the finalized
    model (checked in ``_finalize``) and faster, as they quantize each frozen weight only once."""
    run.model.eval()
    quant_nll = window_nll(
        run.model, run.windows, run.args.dmx_eval_batch_size, f"{run.plan.method.name} ppl")
    run.record.window_nll = quant_nll.tolist()
    run.record.quant_ppl = perplexity_of(quant_nll, run.plan.seqlen)
    if run.texts is not None:
        run.texts.score(run, run.model, QUANT)
        run.record.texts = run.texts.report(QUANT)
    if zero_shot:
        _zero_shot(run)


def _finalize(run: Run, projection) -> Dict[str, float]:
    """Fixed Brevitas MX quantizers in place of the learnable ones, checked to give the evaluated
    logits and to meet the budget. Returns the deployed model's bits report."""
    plan = run.plan
    try:
        report = finalize_checked(
            run.model,
            run.windows[:1].to(run.device),
            plan.target_bits,
            projection=projection,
            **plan.weighting)
    except BudgetError as err:
        raise UsageError(
            f"{plan.method.name}: {err} (--dmx-target-bits {plan.target_bits:g})") from None
    if plan.deploy == DeployTarget.VLLM_QUARK:  # the search's promise, checked on the result
        check_format_map_served(dmx.format_map(run.model))
    return report


def _zero_shot(run: Run) -> None:
    args = run.args
    if args.dmx_eval_tasks:
        eval_start = time.perf_counter()
        run.record.accuracy = zero_shot(
            run.model,
            run.tokenizer,
            eval_tasks(args),
            include=args.dmx_eval_include,
            limit=args.dmx_eval_limit,
            batch_size=args.dmx_eval_batch_size)
        run.record.zero_shot_time_s = time.perf_counter() - eval_start


def _peak_memory_bytes(device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _finish(run: Run, report: Optional[Dict[str, float]]) -> RunRecord:
    """The bits and the gap closed into the record; on rank 0 the deployment files, the output
    folder's files, the results line and the printed report."""
    plan, args, record = run.plan, run.plan.args, run.record
    fmap = None
    if report is not None:
        fmap = dmx.format_map(run.model)
        record.avg_bits = report[args.dmx_average]
        record.avg_bits_with_scales = report[args.dmx_average + "_with_scales"]
        record.budget_binds = args.dmx_average + (
            " with scales" if args.dmx_budget_with_scales else " without scales")
        record.bits = report
        record.format_counts = dmx.format_counts(fmap)
    _known_extras(record)
    low = record.uniform.get(uniform_stem(plan.ladder.formats[0]))
    high = record.uniform.get(uniform_stem(plan.ladder.formats[-1]))
    if low is not None and low != high:
        # the search's share, with round-to-nearest weights as the uniform baselines have
        searched = (record.weight_rounding or {}).get("rtn_ppl", record.quant_ppl)
        record.gap_closed = (low - searched) / (low - high)
    record.peak_mem_bytes = _peak_memory_bytes(run.device)
    record.device = str(run.device)
    record.total_time_s = time.perf_counter() - run.started
    record.extras.update(distributed.summary())
    if not distributed.is_main():  # every rank holds the same result; rank 0 writes it
        return record
    results = args.dmx_results or os.path.join(plan.out_dir, "results.jsonl")
    try:
        deployed = deploy(plan, run.model, run.tokenizer, record) if fmap is not None else []
    finally:  # the evaluated run is kept even where a deployment is refused
        write_metrics(plan.out_dir, record)
        if fmap is not None:
            write_format_map(plan, record, fmap)
        append_result(results, record, plan)
    print(summary(record))
    logger.info(f"{written_summary(plan.out_dir, deployed)}; appended to {results}")
    return record


def _known_extras(record: RunRecord) -> None:
    """The method hooks' measurements (``run.metrics``) that the record names, moved into their
    fields."""
    for key in list(record.extras):
        if hasattr(record, key) and key not in ("uniform", "extras"):
            setattr(record, key, record.extras.pop(key))
