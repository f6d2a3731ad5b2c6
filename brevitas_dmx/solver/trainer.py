# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Training the offsets: a Hugging Face ``Trainer`` with frozen weights and a bit penalty.

Only the learnable offsets train (next-token cross-entropy + penalty); checkpoints hold just the
offsets and the optimizer state, so they are a few kilobytes, and ``resume_from_checkpoint``
continues a run exactly (same data order, same optimizer state, same temperature).
"""

import math
import os
from typing import Dict, List, Optional

import torch
from torch import nn
from transformers import Trainer
from transformers import TrainingArguments

from brevitas_dmx.model import dmx_offsets
from brevitas_dmx.solver.callbacks import DEFAULT_TEMP_DELAY
from brevitas_dmx.solver.callbacks import DEFAULT_TEMP_END
from brevitas_dmx.solver.callbacks import DEFAULT_TEMP_START
from brevitas_dmx.solver.callbacks import DMXLoggingCallback
from brevitas_dmx.solver.callbacks import TemperatureScheduleCallback

OFFSETS_FILE = "dmx_offsets.pt"
OPTIMIZERS = ("sgd", "adam", "adamw")


class NonFiniteLossError(RuntimeError):
    """The loss stopped being finite; the last checkpoint before it is kept."""


def offsets_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The learnable offsets by parameter name (shared offsets under their first name)."""
    wanted = {id(o.raw_offset) for o in dmx_offsets(model)}
    return {
        name: p.detach().cpu().clone() for name, p in model.named_parameters() if id(p) in wanted
    }


def load_offsets(model: nn.Module, state: Dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [name for name in state if name not in params]
    if missing:
        raise ValueError(f"Offsets checkpoint does not fit this model: unknown {missing[:3]}")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


class DMXLossMixin:
    """Task loss + bit penalty (``self.regularizer``) for an HF ``Trainer``, with the task
    loss, penalty and average bits averaged into each log, and a clear stop on a loss that is
    not finite."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        task_loss = outputs["loss"] if isinstance(outputs, dict) else outputs[0]
        penalty, bits = self.regularizer(model)
        loss = task_loss + penalty.to(task_loss.device)
        if not torch.isfinite(loss.detach()):
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
            logs.update({k: v / count for k, v in self._dmx_sums.items()})
            self._dmx_sums, self._dmx_count = {}, 0
        super().log(logs, *args, **kwargs)

    def _last_checkpoint(self) -> Optional[str]:
        from transformers.trainer_utils import get_last_checkpoint
        if not os.path.isdir(self.args.output_dir):
            return None
        return get_last_checkpoint(self.args.output_dir)


class DMXTrainer(DMXLossMixin, Trainer):
    """Trains only the dMX offsets of ``model`` with the task loss plus ``regularizer``.

    The optimizer defaults to the paper's SGD (momentum 0.99, Nesterov, no weight decay) at
    ``args.learning_rate``; ``optimizer_name`` may be 'adam' or 'adamw'. The temperature follows
    ``TemperatureScheduleCallback`` (T0 for ``temp_delay`` of the steps, then exponential to T1).
    """

    def __init__(
            self,
            model: nn.Module,
            args: TrainingArguments,
            regularizer,
            optimizer_name: str = "sgd",
            momentum: float = 0.99,
            temp_start: float = DEFAULT_TEMP_START,
            temp_end: float = DEFAULT_TEMP_END,
            temp_delay: float = DEFAULT_TEMP_DELAY,
            callbacks: Optional[List] = None,
            **kwargs):
        if optimizer_name not in OPTIMIZERS:
            raise ValueError(f"Unknown optimizer {optimizer_name!r}; choose one of {OPTIMIZERS}.")
        offsets = dmx_offsets(model)
        if not offsets:
            raise ValueError(
                "The model has no learnable dMX offsets: quantize its Linear layers with the "
                "brevitas_dmx quantizers first.")
        for param in model.parameters():
            param.requires_grad_(False)
        for offset in offsets:
            offset.raw_offset.requires_grad_(True)
        self.schedule = TemperatureScheduleCallback(temp_start, temp_end, temp_delay)
        callbacks = [self.schedule, DMXLoggingCallback(self.schedule)] + list(callbacks or [])
        super().__init__(model=model, args=args, callbacks=callbacks, **kwargs)
        self.regularizer = regularizer
        self.optimizer_name = optimizer_name
        self.momentum = momentum

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            params = [o.raw_offset for o in dmx_offsets(self.model)]
            lr = self.args.learning_rate
            if self.optimizer_name == "sgd":
                self.optimizer = torch.optim.SGD(
                    params, lr=lr, momentum=self.momentum, nesterov=self.momentum > 0)
            elif self.optimizer_name == "adam":
                self.optimizer = torch.optim.Adam(params, lr=lr)
            else:
                self.optimizer = torch.optim.AdamW(params, lr=lr)
        return self.optimizer

    def _save(self, output_dir: Optional[str] = None, state_dict=None):
        # Only the offsets: the frozen weights are the user's float checkpoint.
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        torch.save(offsets_state_dict(self.model), os.path.join(output_dir, OFFSETS_FILE))
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        path = os.path.join(resume_from_checkpoint, OFFSETS_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No dMX offsets checkpoint at {path}")
        load_offsets(model or self.model, torch.load(path, map_location="cpu"))


def training_arguments(
        output_dir: str,
        steps: int,
        batch_size: int = 8,
        lr: float = 1.0,
        seed: int = 0,
        save_steps: Optional[int] = None,
        logging_steps: Optional[int] = None,
        gradient_accumulation_steps: int = 1,
        **kwargs) -> TrainingArguments:
    """The paper's recipe as ``TrainingArguments``: constant learning rate, no weight decay,
    checkpoints of the offsets every ``save_steps`` (a tenth of the run by default)."""
    if steps < 1:
        raise ValueError(f"The number of training steps must be >= 1, got {steps}")
    save_steps = save_steps or max(1, math.ceil(steps / 10))
    return TrainingArguments(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        learning_rate=lr,
        lr_scheduler_type="constant",
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
