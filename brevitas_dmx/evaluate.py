# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Perplexity on evaluation windows, and the per-layer report (table and plot)."""

import math
from typing import Dict, Optional

import torch
from tqdm.auto import tqdm


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, batch_size: int = 4, desc: str = "perplexity") -> float:
    """exp(mean next-token NLL) over ``windows`` ([n, seqlen] token ids), in eval mode."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    for start in tqdm(range(0, len(windows), batch_size), desc=desc, leave=False):
        batch = windows[start:start + batch_size].to(device)
        logits = model(input_ids=batch).logits.float()
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum")
        total_nll += float(nll)
        total_tokens += batch[:, 1:].numel()
    model.train(was_training)
    return math.exp(total_nll / total_tokens)


def format_table(fmap: Dict[str, Dict]) -> str:
    """A Markdown table of the per-layer formats."""
    lines = ["| layer | weight | input | bits |", "|---|---|---|---|"]
    for name, entry in fmap.items():
        lines.append(f"| {name} | {entry['weight']} | {entry['input']} | {entry['bits']:g} |")
    return "\n".join(lines)


def plot_bits(fmap: Dict[str, Dict], path: str, title: Optional[str] = None) -> str:
    """A bar per layer of its weight bit width, coloured by format, saved as PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(fmap)
    bits = [fmap[n]["bits"] for n in names]
    formats = [fmap[n]["weight"] or fmap[n]["input"] for n in names]
    palette = {"e2m1": "#4c72b0", "e2m3": "#55a868", "e3m2": "#8172b2", "e4m3": "#c44e52",
               "e5m2": "#dd8452"}
    fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(names) + 2), 3.6))
    ax.bar(range(len(names)), bits, color=[palette.get(f, "grey") for f in formats])
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([n.replace("model.layers.", "L").replace("self_attn.", "").replace("mlp.", "")
                        for n in names], rotation=90, fontsize=6)
    ax.set_ylabel("bits per element")
    ax.set_ylim(0, 9)
    for fmt, colour in palette.items():
        if fmt in formats:
            ax.bar([], [], color=colour, label=fmt.upper())
    ax.legend(loc="upper right", fontsize=7, ncol=len(set(formats)))
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
