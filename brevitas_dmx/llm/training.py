# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""dMX proper: the offsets trained under the budget penalty, resumable from checkpoints."""

import logging
import os

import torch
from transformers.trainer_utils import get_last_checkpoint

from brevitas_dmx import distributed
from brevitas_dmx.config import Loss
from brevitas_dmx.config import Regularizer
from brevitas_dmx.llm.plan import CHECKPOINTS_DIR
from brevitas_dmx.pipeline import prepare_training
from brevitas_dmx.solver import DMXTrainer
from brevitas_dmx.solver import HeldBudget
from brevitas_dmx.solver import ScalingPenalty
from brevitas_dmx.solver import TargetAwarePenalty
from brevitas_dmx.solver import training_arguments
from brevitas_dmx.solver.distillation import teacher_targets
from brevitas_dmx.solver.projection import budget_problem
from brevitas_dmx.solver.projection import save_problem
from brevitas_dmx.solver.trainer import OFFSETS_FILE
from brevitas_dmx.solver.trainer import offsets_state_dict

logger = logging.getLogger(__name__)


def regularizer(plan):
    """The penalty that holds the average bits: the target-aware one, or lambda*b."""
    args = plan.args
    if args.dmx_regularizer == Regularizer.TARGET:
        return TargetAwarePenalty(args.dmx_target_bits, args.dmx_lambda, **plan.weighting)
    if args.dmx_regularizer == Regularizer.HOLD:
        return HeldBudget(args.dmx_target_bits, **plan.weighting)
    return ScalingPenalty(args.dmx_lambda, **plan.weighting)


def train_offsets(plan, model, calib) -> dict:
    """Trains the offsets (resuming from the last checkpoint under ``--dmx-resume``), saves them
    and the budget problem in the output folder. Returns, for the run's metrics, how the
    training was parallelized (``parallelism``: accelerate's distributed type, NO, MULTI_CPU,
    MULTI_GPU or FSDP) and how many of its steps skipped the passes because every offset had
    settled (``train_settled_steps``; counted from a resumed checkpoint on)."""
    args = plan.args
    prepare_training(model, plan.rounding)
    if args.dmx_loss == Loss.KD:
        logger.info(f"distillation: the float model's top {args.dmx_kd_top_k} tokens per position")
        calib = teacher_targets(model, calib, args.dmx_kd_top_k, args.dmx_eval_batch_size)
    checkpoints = os.path.join(plan.out_dir, CHECKPOINTS_DIR)
    training_args = training_arguments(
        checkpoints,
        args.dmx_steps,
        args.dmx_batch_size,
        args.dmx_lr,
        args.seed,
        gradient_accumulation_steps=args.dmx_grad_accum,
        lr_schedule=args.dmx_lr_schedule)
    trainer = DMXTrainer(
        model,
        training_args,
        regularizer(plan),
        optimizer_name=args.dmx_optimizer,
        momentum=args.dmx_momentum,
        temp_start=args.dmx_temp_start,
        temp_end=args.dmx_temp_end,
        temp_delay=args.dmx_temp_delay,
        reuse_quantized_weights=not args.dmx_recompute_weights,
        compile_kernels=args.dmx_compile or None,
        train_dataset=calib)
    resume = get_last_checkpoint(
        checkpoints) if args.dmx_resume and os.path.isdir(checkpoints) else None
    if resume:
        logger.info(f"resuming from {resume}")
    trainer.train(resume_from_checkpoint=resume)
    offsets = offsets_state_dict(model)  # identical on every rank (DMXTrainer.train checks)
    if distributed.is_main():
        torch.save(offsets, os.path.join(plan.out_dir, OFFSETS_FILE))
        save_problem(budget_problem(model), plan.out_dir)
    if trainer.settled_steps:
        logger.info(
            f"{trainer.settled_steps} of {args.dmx_steps} steps skipped the passes: "
            f"every offset had settled on its format")
    return {
        "parallelism": str(trainer.accelerator.distributed_type.value),
        "train_settled_steps": trainer.settled_steps,
    }
