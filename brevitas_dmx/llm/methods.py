# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The methods of ``--dmx-method``: one class each, behind one registry.

A method says what its flags need (``check``), whether it searches under a budget, what it
scores on the float model before quantization, how it chooses the formats (``search``), which
formats it can give a Quark export, and how results name it. A new method is a subclass
registered with ``register_method``; the stages call nothing but these hooks.
"""

import os
import time
from typing import Dict, List, Optional, Set, Tuple

import torch

import brevitas_dmx as dmx
from brevitas_dmx.baselines import mlp_high_map
from brevitas_dmx.config import Init
from brevitas_dmx.config import Method as MethodName
from brevitas_dmx.config import Optimizer
from brevitas_dmx.formats import element_format
from brevitas_dmx.llm.cache import sensitivity_scores
from brevitas_dmx.llm.plan import source_train_steps
from brevitas_dmx.llm.plan import UsageError
from brevitas_dmx.llm.training import train_offsets
from brevitas_dmx.model import check_format_map
from brevitas_dmx.pipeline import project_offsets
from brevitas_dmx.pipeline import score_projection
from brevitas_dmx.solver.projection import assign_projection
from brevitas_dmx.solver.projection import budget_start_offsets
from brevitas_dmx.solver.projection import init_offsets
from brevitas_dmx.solver.projection import load_problem
from brevitas_dmx.solver.projection import restore_start_offsets
from brevitas_dmx.solver.trainer import load_offsets
from brevitas_dmx.solver.trainer import OFFSETS_FILE

# The registry: --dmx-method name -> method object.
REGISTRY: Dict[str, "Method"] = {}


def register_method(cls):
    """Registers a ``Method`` subclass under its ``name`` (usable as a class decorator)."""
    REGISTRY[cls.name] = cls()
    return cls


def method_names() -> Tuple[str, ...]:
    return tuple(REGISTRY)


def get_method(name: str) -> "Method":
    if name not in REGISTRY:
        raise UsageError(f"--dmx-method {name!r}: choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


class Method:
    """A way to choose each layer's format. The defaults are those of a method that sets the
    formats itself (``preset``) on a quantized model, under no budget of its own."""
    name = ""
    searches = False  # needs --dmx-target-bits and meets it (dmx, kl, fisher)
    quantizes = True
    uniform_baselines = False  # the run also measures each format of the ladder on every layer

    def check(self, args) -> None:
        """Refuses the method's own flags where they do not fit (before anything loads)."""

    def label(self, plan) -> str:
        """The method as metrics, results and plots name it."""
        return self.name

    def quark_formats(self, plan) -> Tuple[Set[str], Set[str]]:
        """The weight and input formats the run can give (what a Quark export must spell)."""
        names = {f.name for f in plan.ladder.formats}
        return names, set(names)

    def float_scores(self, run) -> Tuple[Optional[Dict], float]:
        """Scores computed on the float model before it is quantized, and their seconds."""
        return None, 0.0

    def after_load(self, run) -> None:
        """Checks against the loaded model, before its float perplexity is measured."""

    def preset(self, plan, layer_names: List[str]) -> Dict:
        """The format map of a method that sets formats rather than searching them."""
        raise NotImplementedError(f"{type(self).__name__} sets no format map")

    def search(self, run, layers, scores):
        """Sets every layer's format; returns the projection onto the budget (None where the
        formats are set, not searched)."""
        dmx.apply_format_map(run.model, self.preset(run.plan, [n for n, _ in layers]))
        return None


@register_method
class DMX(Method):
    """dMX: the offsets trained under the budget (or re-used from another run), then projected
    exactly onto it."""
    name = MethodName.DMX.value
    searches = True
    uniform_baselines = True

    def float_scores(self, run):
        if run.plan.args.dmx_init == "fisher" and run.plan.args.dmx_retarget_from is None:
            return sensitivity_scores(run.plan, run.model, run.calib, "fisher")
        return None, 0.0

    def search(self, run, layers, scores):
        args, metrics = run.plan.args, run.metrics
        if args.dmx_retarget_from:
            source = args.dmx_retarget_from
            load_offsets(
                run.model, torch.load(os.path.join(source, OFFSETS_FILE), map_location="cpu"))
            restore_start_offsets(run.model, load_problem(source))
            metrics["retargeted_from"] = os.path.abspath(source)
            metrics["retargeted_steps"] = source_train_steps(source)
            run.log(f"offsets learned in {source}, re-projected (no training)")
        else:
            metrics["init"] = args.dmx_init
            if scores is not None:  # --dmx-init fisher
                init_offsets(
                    run.model,
                    score_projection(run.model, scores, run.plan.target_bits, **run.plan.weighting))
                run.log("offsets start on the Fisher baseline's formats for the budget")
            elif args.dmx_init == Init.BUDGET:
                start = budget_start_offsets(
                    run.model, run.plan.target_bits, args.dmx_temp_start, **run.plan.weighting)
                metrics["init_offset"] = start
                run.log(f"offsets start at {start:.3f}, where the average is the budget")
            train_start = time.perf_counter()
            metrics.update(train_offsets(run.plan, run.model, run.calib))
            metrics["train_time_s"] = time.perf_counter() - train_start
            metrics["train_steps"] = args.dmx_steps
            metrics["train_grad_accum"] = args.dmx_grad_accum
            metrics["train_lr"] = args.dmx_lr
            metrics["train_lr_schedule"] = args.dmx_lr_schedule
            if args.dmx_optimizer == Optimizer.SGD:  # Adam's moments have no such setting
                metrics["train_momentum"] = args.dmx_momentum
        run.model.eval()
        metrics["learned_avg_bits"] = dmx.bits_report(run.model)[args.dmx_average]
        projection = project_offsets(run.model, run.plan.target_bits, **run.plan.weighting)
        metrics["lowered_offsets"] = projection.lowered
        return projection


class _Sensitivity(Method):
    """Layer scores on the float model, then the formats that minimize their sum under the
    budget."""
    searches = True
    solver = "knapsack"

    def float_scores(self, run):
        return sensitivity_scores(run.plan, run.model, run.calib, self.name)

    def search(self, run, layers, scores):
        projection = score_projection(
            run.model, scores, run.plan.target_bits, self.solver, **run.plan.weighting)
        assign_projection(run.model, projection)
        return projection


@register_method
class KL(_Sensitivity):
    """Per-layer KL to the float model, greedy (the paper's baseline)."""
    name = MethodName.KL.value
    solver = "greedy"


@register_method
class Fisher(_Sensitivity):
    """Gradient (Fisher) sensitivity, exact knapsack."""
    name = MethodName.FISHER.value


@register_method
class Uniform(Method):
    """--dmx-format on every layer."""
    name = MethodName.UNIFORM.value

    def check(self, args):
        if args.dmx_format is None:
            raise UsageError("--dmx-method uniform needs --dmx-format (e.g. mxfp4, e2m3, mxfp8)")
        try:
            fmt = element_format(args.dmx_format)
        except ValueError as err:
            raise UsageError(f"--dmx-format: {err}") from None
        bits = fmt.bits + (0.25 if args.dmx_budget_with_scales else 0.0)
        if args.dmx_target_bits is not None and bits > args.dmx_target_bits:
            raise UsageError(
                f"--dmx-format {args.dmx_format} needs {bits:g} bits, over --dmx-target-bits "
                f"{args.dmx_target_bits:g}")

    def quark_formats(self, plan):
        name = element_format(plan.args.dmx_format).name
        return {name}, {name}

    def preset(self, plan, layer_names):
        return {name: element_format(plan.args.dmx_format).name for name in layer_names}


@register_method
class MLP8(Method):
    """MLP layers in the ladder's high format, attention in the low one."""
    name = MethodName.MLP8.value

    def preset(self, plan, layer_names):
        formats = plan.ladder.formats
        return mlp_high_map(layer_names, formats[0].name, formats[-1].name)


@register_method
class Float(Method):
    """No quantization: the float model's perplexity as the run's result."""
    name = MethodName.FLOAT.value
    quantizes = False


class FormatMap(Method):
    """--dmx-format-map: a map applied by itself (pins formats by hand). Not a --dmx-method:
    the flag selects it."""
    name = "map"

    def label(self, plan):
        return f"map:{plan.args.dmx_format_map}"

    def quark_formats(self, plan):
        parsed = check_format_map(plan.file_map)
        weights = {e["weight"] for e in parsed.values() if "weight" in e}
        inputs = {e["input"] for e in parsed.values() if "input" in e}
        return weights, inputs

    def after_load(self, run):
        from brevitas_dmx.baselines import linear_layers
        plan = run.plan
        try:
            quantized = linear_layers(run.model, plan.excluded_layers)
        except ValueError:
            raise UsageError(f"--model {plan.args.model}: no Linear layers to quantize") from None
        unknown = [name for name in plan.file_map if name not in quantized]
        if unknown:
            examples = ", ".join(sorted(quantized)[:3])
            raise UsageError(
                f"--dmx-format-map {plan.args.dmx_format_map!r} names layers that "
                f"{plan.args.model} does not quantize: {unknown[:5]}"
                f"{' ...' if len(unknown) > 5 else ''} (its layers are e.g. {examples})")

    def preset(self, plan, layer_names):
        return plan.file_map


FORMAT_MAP = FormatMap()
