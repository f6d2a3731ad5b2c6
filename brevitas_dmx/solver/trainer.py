# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Training the offsets: a Hugging Face ``Trainer`` with frozen weights and a bit penalty.

Only the learnable offsets train (next-token cross-entropy + penalty); checkpoints hold just the
offsets and the optimizer state, so they are a few kilobytes, and ``resume_from_checkpoint``
continues a run exactly (same data order, same optimizer state, same temperature).
"""

import contextlib
import logging
import math
import os
from typing import Dict, List, Optional

import torch
from torch import nn
from transformers import Trainer
from transformers import TrainerCallback
from transformers import TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from brevitas_dmx import distributed
from brevitas_dmx.config import DEFAULT_BATCH_SIZE
from brevitas_dmx.config import DEFAULT_LR
from brevitas_dmx.config import DEFAULT_MOMENTUM
from brevitas_dmx.config import DEFAULT_TEMP_DELAY
from brevitas_dmx.config import DEFAULT_TEMP_END
from brevitas_dmx.config import DEFAULT_TEMP_START
from brevitas_dmx.config import LRSchedule
from brevitas_dmx.config import OPTIMIZERS
from brevitas_dmx.model import batched_formats
from brevitas_dmx.model import dmx_offsets
from brevitas_dmx.model import format_counts
from brevitas_dmx.model import format_map
from brevitas_dmx.model import offsets_settled
from brevitas_dmx.model import reusing_quantized_weights
from brevitas_dmx.model import train_only_offsets
from brevitas_dmx.model import use_compiled_kernels
from brevitas_dmx.solver.callbacks import TemperatureScheduleCallback
from brevitas_dmx.solver.distillation import distillation_loss
from brevitas_dmx.solver.distillation import TEACHER_INDICES
from brevitas_dmx.solver.distillation import TEACHER_KEYS
from brevitas_dmx.solver.distillation import TEACHER_LOGPROBS

logger = logging.getLogger(__name__)

OFFSETS_FILE = "dmx_offsets.pt"


class NonFiniteLossError(RuntimeError):
    """The loss stopped being finite; the last checkpoint before it is kept."""


def offsets_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The learnable offsets by parameter name (shared offsets under their first name)."""
    wanted = {id(o.raw_offset) for o in dmx_offsets(model)}
    return {
        name: distributed.full_value(p).cpu().clone()
        for name, p in model.named_parameters()
        if id(p) in wanted
    }


def offsets_vector(model: nn.Module) -> torch.Tensor:
    """The model's distinct offsets as one float64 vector (in ``dmx_offsets`` order)."""
    values = [distributed.full_value(o.raw_offset).reshape(-1) for o in dmx_offsets(model)]
    return torch.cat(values).to(torch.float64) if values else torch.zeros(0, dtype=torch.float64)


def sync_offsets(model: nn.Module) -> float:
    """Checks that every rank holds the same offsets, then makes them bit-identical.

    Returns the largest difference between a rank's offsets and rank 0's (0.0 in a single
    process; data-parallel training keeps it at 0.0, as every rank applies the same all-reduced
    gradient). Rank 0's offsets are then broadcast, so whatever the difference, one format
    decision per layer holds on every rank.
    """
    if not distributed.in_process_group():
        return 0.0
    mine = offsets_vector(model)
    reference = distributed.broadcast(mine)
    spread = (mine - reference).abs().max() if mine.numel() else mine.new_zeros(())
    spread = distributed.all_reduce(spread.reshape(1), torch.distributed.ReduceOp.MAX)
    with torch.no_grad():
        position = 0
        for offset in dmx_offsets(model):
            param = offset.raw_offset
            count = param.numel()
            value = reference[position:position + count].reshape(param.shape)
            position += count
            local = getattr(param, "to_local", None)
            if local is None:
                param.copy_(value.to(param.device, param.dtype))
            elif local().numel():  # a DTensor shard that holds the scalar
                local().copy_(value.reshape(local().shape).to(local().device, param.dtype))
    return float(spread[0])


def dump_rank_offsets(model: nn.Module, directory: Optional[str] = None) -> Optional[str]:
    """Writes this rank's offsets to ``directory/offsets_rank{R}.pt`` when ``directory`` (or the
    ``BREVITAS_DMX_RANK_OFFSETS`` environment variable) names a folder."""
    directory = directory or os.environ.get(distributed.RANK_OFFSETS_ENV)
    if not directory:
        return None
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"offsets_rank{distributed.rank()}.pt")
    torch.save(offsets_state_dict(model), path)
    return path


def load_offsets(model: nn.Module, state: Dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [name for name in state if name not in params]
    if missing:
        raise ValueError(f"Offsets checkpoint does not fit this model: unknown {missing[:3]}")
    with torch.no_grad():
        for name, value in state.items():
            param = params[name]
            local = getattr(param, "to_local", None)  # an FSDP2 DTensor: every rank holds it
            target = param if local is None else local()
            target.copy_(value.reshape(target.shape).to(target.device, target.dtype))


def format_log(model: nn.Module) -> Dict[str, float]:
    """The annealing temperature and the number of layers on each discrete format, for a log."""
    offsets = dmx_offsets(model)
    logs = {"temperature": float(offsets[0].temperature)} if offsets else {}
    for fmt, count in format_counts(format_map(model)).items():
        logs[f"layers_{fmt}"] = count
    return logs


class DMXLossMixin:
    """Task loss + bit penalty (``self.regularizer``) for an HF ``Trainer``, with the task
    loss, penalty and average bits averaged into each log, and a clear stop on a loss that is
    not finite. The task loss is the model's cross-entropy on the labels, or, for samples that
    carry the float model's top-k (``distillation.teacher_targets``), the distillation loss."""

    # compute_loss returns the mean over its micro-batch: the Trainer divides it by the number
    # of gradient accumulation steps (its default guesses "already scaled" for HF models).
    loss_is_scaled_for_ga = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # The task loss is this rank's mean over its equal share of the global batch; the
        # gradient all-reduce averages the ranks, which gives the mean over the global batch. The
        # penalty depends on the offsets only, so it is the same on every rank: computed once
        # from the global average, and unchanged by the averaging.
        teacher = {key: inputs.pop(key) for key in TEACHER_KEYS if key in inputs}
        if teacher:  # distillation: the float model's top-k rides with each sample
            labels = inputs.pop("labels", None)
            outputs = model(**inputs)
            task_loss = distillation_loss(
                outputs["logits"],
                teacher[TEACHER_LOGPROBS],
                teacher[TEACHER_INDICES],
                inputs.get("attention_mask"))
            if labels is not None:
                inputs["labels"] = labels
        else:
            outputs = model(**inputs)
            task_loss = outputs["loss"] if isinstance(outputs, dict) else outputs[0]
        penalty, bits = self.regularizer(model)
        loss = task_loss + penalty.to(task_loss.device)
        finite = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
        if distributed.is_distributed():  # every rank stops together, or none does
            finite = distributed.all_reduce(finite, torch.distributed.ReduceOp.MIN)
        if not bool(finite[0]):
            checkpoint = self._last_checkpoint()
            raise NonFiniteLossError(
                f"The training loss became {loss.item()} at step {self.state.global_step} "
                f"(task loss {task_loss.item()}, penalty {penalty.item()}). Lower --dmx-lr or "
                f"--dmx-lambda. Last good checkpoint: {checkpoint or 'none yet'}.")
        sums = self.__dict__.setdefault("_dmx_sums", {})
        for key, value in (("task_loss", task_loss), ("penalty", penalty), ("avg_bits", bits)):
            sums[key] = sums.get(key, 0.0) + float(value.detach())
        self._dmx_count = getattr(self, "_dmx_count", 0) + 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs, *args, **kwargs):
        count = getattr(self, "_dmx_count", 0)
        if count:
            sums = self._dmx_sums
            if distributed.is_distributed():  # the means over all ranks' micro-batches
                keys = sorted(sums)
                total = distributed.all_reduce(
                    torch.tensor([sums[k] for k in keys] + [count], dtype=torch.float64))
                sums, count = dict(zip(keys, total[:-1].tolist())), float(total[-1])
            logs.update({k: v / count for k, v in sums.items()})
            self._dmx_sums, self._dmx_count = {}, 0
        if getattr(self, "_settled_since_log", 0) and "loss" in logs:
            # The Trainer's "loss" averages every step since the last log, settled steps' zeros
            # among them (DMXTrainer): the computed steps' mean instead, none if none ran.
            if count:
                logs["loss"] = logs["task_loss"] + logs["penalty"]
            else:
                del logs["loss"]
            logs["settled_steps"] = self.settled_steps
            self._settled_since_log = 0
        # Added before Trainer.log copies the logs into the state's log history (and so into
        # trainer_state.json and the report integrations), not after it in a callback.
        logs.update(format_log(self.model))
        super().log(logs, *args, **kwargs)

    def _last_checkpoint(self) -> Optional[str]:
        if not os.path.isdir(self.args.output_dir):
            return None
        return get_last_checkpoint(self.args.output_dir)


def sgd_options(lr: float, momentum: float) -> dict:
    """The paper's SGD on the offsets: Nesterov momentum (plain SGD at momentum 0, where
    ``torch.optim.SGD`` refuses Nesterov), no weight decay."""
    return {"lr": lr, "momentum": momentum, "nesterov": momentum > 0}


class DMXTrainer(DMXLossMixin, Trainer):
    """Trains only the dMX offsets of ``model`` with the task loss plus ``regularizer``.

    The optimizer defaults to the paper's SGD (momentum 0.99, Nesterov, no weight decay) at
    ``args.learning_rate``; ``optimizer_name`` may be 'adam' or 'adamw'. ``regularizer`` returns
    (penalty, average bits) when called on the model; if it has an ``after_step(model)``, that
    runs after every optimizer step. The temperature follows
    ``TemperatureScheduleCallback`` (T0 for ``temp_delay`` of the steps, then exponential to T1).

    Under gradient accumulation the micro-batches of a step share the weight work
    (``reusing_quantized_weights``; ``shares_weight_work``) unless ``reuse_quantized_weights`` is
    False: faster, at the cost of two weight-sized tensors per layer held within each step.

    ``compile_kernels``: True or False switches the model's quantizers to the ``torch.compile``'d
    element kernels or to the eager ones (``use_compiled_kernels``); None (the default) leaves
    them as they are.

    ``skip_settled_steps``: once the annealing has saturated every offset's sigmoid
    (``offsets_settled``), the loss has no gradient left to move any format, so the remaining
    steps skip the forward and backward passes: each offset gets a zero gradient and the
    optimizer still steps, so momentum carries the offsets on as in the full run, and the
    schedule, checkpoints and logs go on. ``self.settled_steps`` counts the steps skipped.
    """

    def __init__(
            self,
            model: nn.Module,
            args: TrainingArguments,
            regularizer,
            optimizer_name: str = "sgd",
            momentum: float = DEFAULT_MOMENTUM,
            temp_start: float = DEFAULT_TEMP_START,
            temp_end: float = DEFAULT_TEMP_END,
            temp_delay: float = DEFAULT_TEMP_DELAY,
            callbacks: Optional[List] = None,
            reuse_quantized_weights: bool = True,
            compile_kernels: Optional[bool] = None,
            skip_settled_steps: bool = True,
            **kwargs):
        if optimizer_name not in OPTIMIZERS:
            raise ValueError(f"Unknown optimizer {optimizer_name!r}; choose one of {OPTIMIZERS}.")
        if not dmx_offsets(model):
            raise ValueError(
                "The model has no learnable dMX offsets: quantize its Linear layers with the "
                "brevitas_dmx quantizers first.")
        offsets = train_only_offsets(model)
        if compile_kernels is not None:
            use_compiled_kernels(model, compile_kernels)
        self.schedule = TemperatureScheduleCallback(temp_start, temp_end, temp_delay)
        callbacks = [self.schedule] + list(callbacks or [])
        if getattr(regularizer, "after_step", None) is not None:
            callbacks.append(_RegularizerAfterStep(regularizer))
        super().__init__(model=model, args=args, callbacks=callbacks, **kwargs)
        self.regularizer = regularizer
        self.optimizer_name = optimizer_name
        self.momentum = momentum
        self.reuse_quantized_weights = reuse_quantized_weights
        self.skip_settled_steps = skip_settled_steps
        self.settled_steps = 0
        self._settled_since_log = 0
        self._settled_checked, self._settled = None, False  # _step_is_settled's step and answer
        self._weight_reuse = None  # the WeightReuse while train() shares the weight work
        if self.is_fsdp_enabled:
            self._keep_offsets_out_of_fsdp(offsets)

    def _keep_offsets_out_of_fsdp(self, offsets) -> None:
        """FSDP (version 2, ``fully_shard``) refuses scalar parameters, and the offsets are
        scalars. They stay out of the shards (replicated, a few bytes each) and their gradients
        are averaged over the ranks as soon as they are accumulated, before gradient clipping,
        so every rank takes the same step. The frozen weights are sharded as usual."""
        plugin = self.accelerator.state.fsdp_plugin
        ignored = list(getattr(plugin, "ignored_modules", None) or [])
        plugin.ignored_modules = ignored + [o for o in offsets if o not in ignored]
        distributed.average_grads_over_ranks(o.raw_offset for o in offsets)

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            params = [o.raw_offset for o in dmx_offsets(self.model)]
            lr = self.args.learning_rate
            if self.optimizer_name == "sgd":
                self.optimizer = torch.optim.SGD(params, **sgd_options(lr, self.momentum))
            elif self.optimizer_name == "adam":
                self.optimizer = torch.optim.Adam(params, lr=lr)
            else:
                self.optimizer = torch.optim.AdamW(params, lr=lr)
        return self.optimizer

    def train(self, *args, **kwargs):
        """``Trainer.train`` with every learnable format computed at once per forward pass
        (``batched_formats``) and, under gradient accumulation, the weight work shared by the
        micro-batches of each step (``reusing_quantized_weights``); then the offsets checked
        identical on every rank and made so (``sync_offsets``); the
        spread is kept in ``self.offsets_rank_spread`` (0.0 in a single process)."""
        with contextlib.ExitStack() as stack:
            stack.enter_context(batched_formats(self.model))
            if self.shares_weight_work:
                self._weight_reuse = stack.enter_context(reusing_quantized_weights(self.model))
                forget = _ForgetStaleWeights(self._weight_reuse)
                self.callback_handler.add_callback(forget)
                stack.callback(self.callback_handler.remove_callback, forget)
                if distributed.is_main():
                    logger.info(
                        f"the {self.args.gradient_accumulation_steps} micro-batches of "
                        f"each step share the weight work: holds about "
                        f"{2 * self._weight_reuse.weight_bytes / 2**30:.2f} GiB through a "
                        f"step (--dmx-recompute-weights turns it off)")
            try:
                result = super().train(*args, **kwargs)
            finally:
                self._weight_reuse = None
        self.offsets_rank_spread = sync_offsets(self.model)
        if self.offsets_rank_spread > 0:
            logger.warning(
                f"offsets differed across ranks by up to {self.offsets_rank_spread:.3g}; "
                f"rank 0's were broadcast")
        dump_rank_offsets(self.model)
        return result

    @property
    def shares_weight_work(self) -> bool:
        """Whether the micro-batches of a step share the weight work: under gradient
        accumulation, unless told not to, and not when the weights are sharded (FSDP,
        DeepSpeed, transformers' sharded loading), where every rank would hold whole (gathered)
        quantized weights and their gradients through the step, what sharding is there to
        avoid."""
        sharded = (
            self.is_fsdp_enabled or self.is_deepspeed_enabled or
            getattr(self, "is_distributed_loading_by_transformers", False))
        return (
            self.reuse_quantized_weights and self.args.gradient_accumulation_steps > 1 and
            not sharded)

    def training_step(self, model, inputs, *args, **kwargs):
        if self.skip_settled_steps and self._step_is_settled():
            return self._settled_step()
        reuse = self._weight_reuse
        if reuse is None:
            return super().training_step(model, inputs, *args, **kwargs)
        # sync_gradients: set by the Trainer before each micro-batch, True on a step's last
        reuse.last = self.accelerator.sync_gradients
        loss = super().training_step(model, inputs, *args, **kwargs)
        if reuse.last:
            reuse.end_step(self.model)
        return loss

    def _step_is_settled(self) -> bool:
        """``offsets_settled`` once per optimizer step: the offsets and the temperature change
        only between steps, not between a step's micro-batches."""
        step = self.state.global_step
        if self._settled_checked != step:
            self._settled_checked, self._settled = step, offsets_settled(self.model)
        return self._settled

    def _settled_step(self) -> torch.Tensor:
        """A micro-batch of a settled step: zero gradients in place of the passes (a ``None``
        gradient would make the optimizer skip the offset, and its momentum with it)."""
        for offset in dmx_offsets(self.model):
            if offset.raw_offset.grad is None:
                offset.raw_offset.grad = torch.zeros_like(offset.raw_offset)
        if self.accelerator.sync_gradients:  # the step's last micro-batch
            self.settled_steps += 1
            self._settled_since_log += 1
        return torch.zeros((), device=self.args.device)

    def _save(self, output_dir: Optional[str] = None, state_dict=None):
        # Only the offsets: the frozen weights are the user's float checkpoint. Every rank
        # holds the same offsets; rank 0 writes them (an FSDP save calls this on every rank,
        # and the full value of a sharded offset is a collective, so gather first).
        output_dir = output_dir or self.args.output_dir
        offsets = offsets_state_dict(self.model)
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        torch.save(offsets, os.path.join(output_dir, OFFSETS_FILE))
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        path = os.path.join(resume_from_checkpoint, OFFSETS_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No dMX offsets checkpoint at {path}")
        load_offsets(model or self.model, torch.load(path, map_location="cpu"))


class _RegularizerAfterStep(TrainerCallback):
    """Calls the regularizer's ``after_step`` after every optimizer step (``HeldBudget`` moves
    the offsets back onto the budget there)."""

    def __init__(self, regularizer):
        self.regularizer = regularizer

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.regularizer.after_step(model)


class _ForgetStaleWeights(TrainerCallback):
    """Drops what a step left behind when it did not finish (an out-of-memory retry of
    ``auto_find_batch_size`` restarts the loop mid-step): each step starts from nothing."""

    def __init__(self, reuse):
        self.reuse = reuse

    def on_step_begin(self, args, state, control, **kwargs):
        self.reuse.clear()


def training_arguments(
        output_dir: str,
        steps: int,
        batch_size: int = DEFAULT_BATCH_SIZE,
        lr: float = DEFAULT_LR,
        seed: int = 0,
        save_steps: Optional[int] = None,
        logging_steps: Optional[int] = None,
        gradient_accumulation_steps: int = 1,
        lr_schedule: str = LRSchedule.CONSTANT.value,
        **kwargs) -> TrainingArguments:
    """The paper's recipe as ``TrainingArguments``: constant learning rate (or ``lr_schedule``,
    a Hugging Face scheduler name), no weight decay,
    checkpoints of the offsets every ``save_steps`` (a tenth of the run by default).

    ``batch_size`` is the GLOBAL batch of one forward pass: under ``accelerate launch`` or
    ``torchrun`` each of the N processes takes ``batch_size / N`` samples (an error if N does
    not divide it), and the Trainer's sharded sampler deals the same samples a single process
    would take in one batch out to the ranks, so the run follows the single-process one. An
    optimizer step sees ``batch_size * gradient_accumulation_steps`` samples."""
    if steps < 1:
        raise ValueError(f"The number of training steps must be >= 1, got {steps}")
    save_steps = save_steps or max(1, math.ceil(steps / 10))
    return TrainingArguments(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=distributed.per_device_batch_size(batch_size),
        gradient_accumulation_steps=gradient_accumulation_steps,
        learning_rate=lr,
        lr_scheduler_type=lr_schedule,
        weight_decay=0.0,
        warmup_steps=0,
        logging_steps=logging_steps or max(1, steps // 20),
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=2,
        seed=seed,
        data_seed=seed,
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
        **kwargs)
