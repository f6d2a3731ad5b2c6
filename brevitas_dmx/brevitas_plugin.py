# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""dMX through stock ``brevitas_ptq_llm``: entries for Brevitas's quantizer and trainer registries.

Importing this module registers, in ``QUANTIZERS_REGISTRY``, ``dmx`` (MXFP8/MXFP4 ladder),
``dmx6`` (MXFP6/MXFP4) and ``dmx-staircase`` (MXFP4/MXFP6/MXFP8), which put the learnable
quantizers on every Linear layer's weight and input; and, in ``TRAINER_REGISTRY``, ``dmx``: a
``GeneralizedTrainer`` that trains only the offsets under the bit budget and, when training
ends, projects the formats exactly onto the budget and finalizes the model to fixed Brevitas MX
quantizers, so whatever ``brevitas_ptq_llm`` does next (evaluation, export) sees a plain
Brevitas model. ``examples/brevitas_dmx_plugin.py`` imports it, for ``--custom-quantizer`` and
``--custom-trainer``::

    brevitas_ptq_llm --model M --custom-quantizer examples/brevitas_dmx_plugin.py:dmx \\
        --fine-tune --custom-trainer examples/brevitas_dmx_plugin.py:dmx \\
        --dmx_target_bits 6 --max_steps 400 --per_device_train_batch_size 8 --eval

The registered classes live in this installed module, so the plugin file importing it twice
does not duplicate them.
"""

from dataclasses import dataclass
from dataclasses import field
import logging
from typing import List

from brevitas.utils.parametrization_utils import extract_trainable_rotation_matrices
from brevitas_examples.common.generative.quantizers import BaseQuantizer
from brevitas_examples.common.generative.quantizers import QUANTIZERS_REGISTRY
from brevitas_examples.llm.llm_quant.trainer_utils import GeneralizedTrainer
from brevitas_examples.llm.llm_quant.trainer_utils import TRAINER_REGISTRY
from brevitas_examples.llm.llm_quant.trainer_utils import \
    TrainingArguments as BrevitasTrainingArguments
import torch

import brevitas_dmx as dmx
from brevitas_dmx.config import AUTO
from brevitas_dmx.config import BudgetArguments
from brevitas_dmx.config import ROUNDING_CHOICES
from brevitas_dmx.console import log_to_console
from brevitas_dmx.formats import DEFAULT_CHAIN
from brevitas_dmx.formats import E8M0_SCALE_BITS
from brevitas_dmx.llm_args import check_ranges
from brevitas_dmx.model import batched_formats
from brevitas_dmx.pipeline import finalize_checked
from brevitas_dmx.pipeline import log_format_table
from brevitas_dmx.pipeline import narrow_ladders
from brevitas_dmx.pipeline import prepare_training
from brevitas_dmx.pipeline import project_offsets
from brevitas_dmx.pipeline import resolve_ladder
from brevitas_dmx.pipeline import resolve_rounding
from brevitas_dmx.quant import LADDER_QUANTIZERS
from brevitas_dmx.solver.callbacks import TemperatureScheduleCallback
from brevitas_dmx.solver.regularizers import TargetAwarePenalty
from brevitas_dmx.solver.trainer import DMXLossMixin
from brevitas_dmx.solver.trainer import sgd_options

logger = logging.getLogger(__name__)


@QUANTIZERS_REGISTRY.register("dmx")
class DMXQuantizer(BaseQuantizer):
    """The default chain, E2M1 -> E2M3 -> E4M3; the trainer narrows each offset to the two
    formats around its budget (``--dmx_ladder auto``, as ``brevitas_dmx_llm``)."""
    weight_quant, linear_input_quant = LADDER_QUANTIZERS[DEFAULT_CHAIN]


@QUANTIZERS_REGISTRY.register("dmx-mxfp8")
class DMXMXFP8Quantizer(BaseQuantizer):
    """The paper's E(2+beta)M(1+beta), MXFP4 to MXFP8."""
    weight_quant, linear_input_quant = LADDER_QUANTIZERS["mxfp8-mxfp4"]


@QUANTIZERS_REGISTRY.register("dmx6")
class DMX6Quantizer(BaseQuantizer):
    weight_quant, linear_input_quant = LADDER_QUANTIZERS["mxfp6-mxfp4"]


@QUANTIZERS_REGISTRY.register("dmx-staircase")
class DMXStaircaseQuantizer(BaseQuantizer):
    weight_quant, linear_input_quant = LADDER_QUANTIZERS["mxfp8-mxfp6-mxfp4"]


@QUANTIZERS_REGISTRY.register("dmx-chain")
class DMXChainQuantizer(BaseQuantizer):
    weight_quant, linear_input_quant = LADDER_QUANTIZERS[DEFAULT_CHAIN]


def dmx_offset_parameters(model, training_args) -> List:
    """The parameter group Brevitas's optimizer builder trains: the dMX offsets."""
    return [offset.raw_offset for offset in dmx.dmx_offsets(model)]


def _rotation_parameters(model, training_args) -> List:
    return extract_trainable_rotation_matrices(model)


# An explicit scheduler per optimizer: Brevitas fills missing ones only in some code paths, and
# with two optimizers (offsets and rotations) transformers 5 would otherwise find none.
_CONSTANT_LR = {
    "scheduler_cls": "ConstantLR", "scheduler_kwargs": {
        "factor": 1.0, "total_iters": 0
    }
}


@dataclass
class DMXTrainingArguments(BrevitasTrainingArguments, BudgetArguments):
    """Brevitas's training arguments, the budget settings of ``brevitas_dmx_llm`` (the same
    fields, defaults and help: ``BudgetArguments``) and the rotations' own."""
    # The stock path always searches, so its budget has a default.
    dmx_target_bits: float = field(
        default=6.0,
        metadata={"help": "Bit budget: the average bits per element the result may not exceed."})
    dmx_ladder: str = field(
        default=AUTO,
        metadata={
            "help":
                "auto: the two formats of the quantizer's chain around --dmx_target_bits (as "
                "brevitas_dmx_llm); or a run of consecutive formats of that chain, e.g. "
                "e2m1,e2m3."
        })
    dmx_rounding: str = field(
        default=AUTO,
        metadata={
            "help":
                "auto: sample where only the exponent grows along the ladder, anneal otherwise "
                "(as brevitas_dmx_llm).",
            "choices": ROUNDING_CHOICES
        })
    dmx_learn_rotations: bool = field(
        default=False,
        metadata={"help": "Train the rotations of --rotation ... --fine-tune jointly (CaileySGD)."})
    dmx_rotation_lr: float = field(default=1.5, metadata={"help": "Rotation learning rate."})
    lr_scheduler_type: str = field(default="constant")

    def __post_init__(self) -> None:
        super().__post_init__()
        # The same ranges as brevitas_dmx_llm's flags, named as HfArgumentParser spells them.
        check_ranges(self, BudgetArguments, name=lambda dest: "--" + dest)
        if self.optimizer_scheduler_args is None:
            # The paper's optimizer on the offsets; SpinQuant's on the rotations if asked.
            self.optimizer_scheduler_args = [
                {
                    "optimizer_cls": "SGD",
                    "param_setup":
                        [
                            {
                                "get_param_fn": dmx_offset_parameters,
                                "optimizer_kwargs": sgd_options(self.dmx_lr, self.dmx_momentum)
                            }
                        ],
                    **_CONSTANT_LR
                }
            ]
            if self.dmx_learn_rotations:
                self.optimizer_scheduler_args.append(
                    {
                        "optimizer_cls": "CaileySGD",
                        "param_setup":
                            [
                                {
                                    "get_param_fn": _rotation_parameters,
                                    "optimizer_kwargs":
                                        {
                                            "lr": self.dmx_rotation_lr,
                                            "stiefel": True,
                                            "dtype": self.optimizer_dtype
                                        }
                                }
                            ],
                        **_CONSTANT_LR
                    })


@TRAINER_REGISTRY.register("dmx")
class BrevitasDMXTrainer(DMXLossMixin, GeneralizedTrainer):
    """Brevitas's trainer with the dMX loss and annealing; around its training, the steps of
    ``brevitas_dmx.pipeline`` that ``brevitas_dmx_llm --dmx`` takes: the ``auto`` ladder and
    rounding, then the projection onto the budget and the checked finalization."""
    training_args_cls = DMXTrainingArguments

    def __init__(self, args: DMXTrainingArguments = None, **kwargs):
        self.schedule = TemperatureScheduleCallback(
            args.dmx_temp_start, args.dmx_temp_end, args.dmx_temp_delay)
        callbacks = [self.schedule]
        callbacks += list(kwargs.pop("callbacks", None) or [])
        super().__init__(args=args, callbacks=callbacks, **kwargs)
        self.regularizer = TargetAwarePenalty(
            args.dmx_target_bits,
            args.dmx_lambda,
            weighting=args.dmx_average,
            include_scale_bits=args.dmx_budget_with_scales)

    def _prepare_offsets(self):
        """The ladder (auto: the two formats of the quantizers' chain around the target) and
        the rounding the offsets train with; returns the ladder."""
        args = self.args
        offsets = dmx.dmx_offsets(self.model)
        chain = offsets[0].ladder.name
        scale_bits = E8M0_SCALE_BITS / 32 if args.dmx_budget_with_scales else 0.0
        ladder = resolve_ladder(args.dmx_ladder, args.dmx_target_bits, scale_bits, chain=chain)
        if ladder.name != chain:
            narrow_ladders(self.model, ladder)
        rounding = resolve_rounding(args.dmx_rounding, ladder)
        prepare_training(self.model, rounding)
        logger.info(f"training on {ladder.name} with {rounding} rounding")
        return ladder

    def train(self, *args, **kwargs):
        log_to_console()
        self._prepare_offsets()
        with batched_formats(self.model):
            result = super().train(*args, **kwargs)
        self.model.eval()
        projection = project_offsets(
            self.model,
            self.args.dmx_target_bits,
            self.args.dmx_average,
            self.args.dmx_budget_with_scales)
        sample = self.train_dataset[0]["input_ids"]
        sample = torch.as_tensor(sample)[None].to(next(self.model.parameters()).device)
        finalize_checked(
            self.model,
            sample,
            self.args.dmx_target_bits,
            self.args.dmx_average,
            self.args.dmx_budget_with_scales,
            projection=projection)
        log_format_table(dmx.format_map(self.model))
        self.model.train()
        return result
