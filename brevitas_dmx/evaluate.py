# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Perplexity on evaluation windows, and the per-layer report (table and plot)."""

import functools
import math
import re
from typing import Dict, List, Optional

import torch
from tqdm.auto import tqdm


@torch.no_grad()
def nll_sum(
        model, windows: torch.Tensor, batch_size: int = 4, desc: str = "perplexity", starts=None):
    """(summed next-token NLL, token count) over the batches of ``windows`` ([n, seqlen] token
    ids) that begin at ``starts`` (all of them by default), in eval mode."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    if starts is None:
        starts = range(0, len(windows), batch_size)
    total_nll, total_tokens = 0.0, 0
    for start in tqdm(starts, desc=desc, leave=False):
        batch = windows[start:start + batch_size].to(device)
        logits = model(input_ids=batch).logits.float()
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum")
        total_nll += float(nll)
        total_tokens += batch[:, 1:].numel()
    model.train(was_training)
    return total_nll, total_tokens


def perplexity(
        model, windows: torch.Tensor, batch_size: int = 4, desc: str = "perplexity") -> float:
    """exp(mean next-token NLL) over ``windows`` ([n, seqlen] token ids), in eval mode."""
    total_nll, total_tokens = nll_sum(model, windows, batch_size, desc)
    return math.exp(total_nll / total_tokens)


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
    from lm_eval.tasks import TaskManager
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
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
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
