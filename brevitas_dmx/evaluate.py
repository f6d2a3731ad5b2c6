# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Perplexity on evaluation windows, and the per-layer report (table and plot)."""

import functools
import hashlib
import math
import re
from typing import Dict, List, Optional

from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
import torch
from tqdm.auto import tqdm

from brevitas_dmx import distributed


@torch.no_grad()
def window_nll(
        model,
        windows: torch.Tensor,
        batch_size: int = 4,
        desc: str = "perplexity",
        starts=None) -> torch.Tensor:
    """Summed next-token NLL of each window ([n, seqlen] token ids), in eval mode, as a float64
    vector of length n.

    Under several processes the batches are dealt out to the ranks: each evaluates whole
    batches (the same batches a single process forms, so each window's NLL is the same bits)
    and leaves the others' windows at zero; a float64 sum over the ranks then fills in every
    window exactly. ``starts`` (the first window of each batch to evaluate) overrides that."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    dealt = starts is None and distributed.in_process_group()
    if starts is None:
        starts = range(0, len(windows), batch_size)
        if dealt:
            starts = list(starts)[distributed.rank()::distributed.world_size()]
    nll = torch.zeros(len(windows), dtype=torch.float64)
    for start in tqdm(starts, desc=desc, leave=False):
        batch = windows[start:start + batch_size].to(device)
        logits = model(input_ids=batch).logits.float()
        token_nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), batch[:, 1:], reduction="none")
        nll[start:start + len(batch)] = token_nll.double().sum(dim=1).cpu()
    model.train(was_training)
    return distributed.all_reduce(nll) if dealt else nll


def perplexity_of(nll: torch.Tensor, seqlen: int) -> float:
    """exp(mean next-token NLL) from per-window NLL sums of ``seqlen``-token windows."""
    return math.exp(float(nll.sum()) / (len(nll) * (seqlen - 1)))


def perplexity(
        model, windows: torch.Tensor, batch_size: int = 4, desc: str = "perplexity") -> float:
    """exp(mean next-token NLL) over ``windows`` ([n, seqlen] token ids), in eval mode."""
    return perplexity_of(window_nll(model, windows, batch_size, desc), windows.shape[1])


def windows_fingerprint(windows: torch.Tensor) -> str:
    """A short hash of the evaluation token ids: paired comparisons need the same windows."""
    return hashlib.sha1(windows.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()[:16]


def paired_ratio(
        nll_a,
        nll_b,
        seqlen: int,
        resamples: int = 2000,
        seed: int = 0,
        level: float = 0.95) -> Dict[str, float]:
    """Perplexity of A over perplexity of B on the same windows, with a paired bootstrap
    confidence interval: windows are resampled with replacement, the same draw for both, so
    what the text makes easy or hard for every model cancels and only the difference between
    the models is left to chance. Returns ``ratio``, ``low``, ``high`` (ratios, e.g. 0.95 =
    A's perplexity is 5 % lower) and ``windows``."""
    a = torch.as_tensor(nll_a, dtype=torch.float64)
    b = torch.as_tensor(nll_b, dtype=torch.float64)
    if a.shape != b.shape or a.dim() != 1 or len(a) == 0:
        raise ValueError(
            f"paired comparison needs per-window NLLs of the same windows; got {tuple(a.shape)} "
            f"and {tuple(b.shape)}")
    if not 0 < level < 1:
        raise ValueError(f"confidence level {level} is not between 0 and 1")
    tokens = seqlen - 1
    difference = (a - b) / tokens  # per-window mean NLL difference
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(len(a), (resamples, len(a)), generator=generator)
    means = difference[draws].mean(dim=1)
    tail = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64))
    return {
        "ratio": math.exp(float(difference.mean())),
        "low": math.exp(float(low)),
        "high": math.exp(float(high)),
        "windows": len(a)
    }


def format_table(fmap: Dict[str, Dict]) -> str:
    """A Markdown table of the per-layer formats."""
    lines = ["| layer | weight | input | bits |", "|---|---|---|---|"]
    for name, entry in fmap.items():
        lines.append(f"| {name} | {entry['weight']} | {entry['input']} | {entry['bits']:g} |")
    return "\n".join(lines)


PALETTE = {
    "e2m1": "#4c72b0", "e2m3": "#55a868", "e3m2": "#8172b2", "e4m3": "#c44e52", "e5m2": "#dd8452"
}
_BLOCK_LAYER = re.compile(r"^(.*)\.(\d+)\.(?:[^.]+\.)?([^.]+)$")


def _grid(fmap: Dict[str, Dict]):
    """(block indices, projection names, {(block, projection): format}) for decoder-style names
    like ``model.layers.3.mlp.down_proj``; None if the names do not follow that pattern."""
    cells, columns = {}, []
    for name, entry in fmap.items():
        match = _BLOCK_LAYER.match(name)
        if match is None:
            return None
        block, column = int(match.group(2)), match.group(3)
        if column not in columns:
            columns.append(column)
        cells[(block, column)] = entry["weight"] or entry["input"]
    blocks = sorted({b for b, _ in cells})
    return blocks, columns, cells


def plot_bits(fmap: Dict[str, Dict], path: str, title: Optional[str] = None) -> str:
    """The per-layer formats as a PNG: a grid (decoder block x projection) for LLMs, a bar per
    layer otherwise."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch
    import matplotlib.pyplot as plt
    import numpy as np
    used = [f for f in PALETTE if any((e["weight"] or e["input"]) == f for e in fmap.values())]
    legend = [
        Patch(color=PALETTE[f], label=f"{f.upper()} ({1 + int(f[1]) + int(f[3])} bits)")
        for f in used
    ]
    grid = _grid(fmap)
    if grid is not None:
        blocks, columns, cells = grid
        index = {f: i for i, f in enumerate(used)}
        image = np.full((len(columns), len(blocks)), np.nan)
        for (block, column), fmt in cells.items():
            image[columns.index(column), blocks.index(block)] = index[fmt]
        fig, ax = plt.subplots(figsize=(max(6, 0.28 * len(blocks) + 2.5), 0.4 * len(columns) + 1.6))
        ax.imshow(
            image,
            cmap=ListedColormap([PALETTE[f] for f in used]),
            aspect="auto",
            vmin=-0.5,
            vmax=len(used) - 0.5,
            interpolation="nearest")
        ax.set_yticks(range(len(columns)))
        ax.set_yticklabels(columns, fontsize=8)
        ax.set_xticks(range(len(blocks)))
        ax.set_xticklabels(blocks, fontsize=7)
        ax.set_xlabel("decoder block")
    else:
        names = list(fmap)
        fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(names) + 2), 3.6))
        ax.bar(
            range(len(names)), [fmap[n]["bits"] for n in names],
            color=[PALETTE.get(fmap[n]["weight"] or fmap[n]["input"], "grey") for n in names])
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=90, fontsize=6)
        ax.set_ylabel("bits per element")
    ax.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@functools.lru_cache(maxsize=4)
def _task_index(include: Optional[str]):
    return TaskManager(include_path=include) if include else TaskManager()


def task_manager(tasks: List[str], include: Optional[str] = None):
    """lm-eval's task index (with a folder of local task YAMLs); unknown task names fail here,
    before any model is loaded."""
    manager = _task_index(include)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        where = f"lm-eval or {include}" if include else "lm-eval (local tasks: --dmx-eval-include)"
        raise ValueError(f"unknown zero-shot tasks {unknown}: not in {where}")
    return manager


def zero_shot(
        model,
        tokenizer,
        tasks: List[str],
        include: Optional[str] = None,
        limit: Optional[int] = None,
        batch_size: int = 4) -> Dict[str, Dict[str, float]]:
    """Zero-shot accuracy through lm-eval on the model's own device.

    ``tasks`` are lm-eval task names; ``include`` a folder of task YAMLs for local tasks (for
    offline data: ``dataset_path: json`` with ``data_files``). Returns ``{task: {"acc": ...,
    "acc_norm": ..., "n": items}}`` (acc_norm where the task reports it)."""
    manager = task_manager(tasks, include)
    was_training = model.training
    model.eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    output = simple_evaluate(
        model=lm, tasks=tasks, limit=limit, task_manager=manager, log_samples=False)
    model.train(was_training)
    results = {}
    for task in tasks:
        row = output["results"][task]
        entry = {"acc": float(row["acc,none"])}
        if "acc_norm,none" in row:
            entry["acc_norm"] = float(row["acc_norm,none"])
        entry["n"] = int(output["n-samples"][task]["effective"])
        results[task] = entry
    return results
