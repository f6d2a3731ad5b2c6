# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""What the points of a sweep share: the tokenizer, the texts, the windows cut from them and
the float model, loaded once. A single run uses a fresh ``RunInputs`` (nothing kept)."""

import copy
from typing import Dict, List, Tuple

from datasets import load_dataset
import torch

from brevitas_dmx import loading
from brevitas_dmx.data import calibration_samples
from brevitas_dmx.data import evaluation_windows
from brevitas_dmx.data import load_text
from brevitas_dmx.data import split_text


class RunInputs:
    """Loads on first use and keeps what it loaded; the float model is handed out as a copy
    (a run quantizes and rotates its model in place)."""

    def __init__(self, keep: bool = False):
        self.keep = keep
        self._tokenizers: Dict = {}
        self._texts: Dict = {}
        self._windows: Dict = {}
        self._models: Dict = {}

    def tokenizer(self, model: str):
        if model not in self._tokenizers:
            self._tokenizers[model] = loading.load_tokenizer(model)
        return self._tokenizers[model]

    def texts(self, dataset: str, eval_fraction: float) -> Tuple[str, str]:
        """(calibration text, evaluation text)."""
        key = (dataset, eval_fraction)
        if key not in self._texts:
            if dataset == "wikitext2":
                data = load_dataset("wikitext", "wikitext-2-raw-v1")
                texts = "".join(data["train"]["text"]), "\n\n".join(data["test"]["text"])
            else:
                texts = split_text(load_text(dataset), eval_fraction)
            self._texts[key] = texts
        return self._texts[key]

    def windows(
            self,
            tokenizer,
            calib_text: str,
            eval_text: str,
            nsamples: int,
            seqlen: int,
            seed: int,
            limit: int) -> Tuple[List[Dict], torch.Tensor]:
        """(calibration samples, evaluation windows) of the texts."""
        key = (id(tokenizer), hash(calib_text), hash(eval_text), nsamples, seqlen, seed, limit)
        if key not in self._windows:
            self._windows[key] = (
                calibration_samples(tokenizer, calib_text, nsamples, seqlen, seed),
                evaluation_windows(tokenizer, eval_text, seqlen, limit))
        return self._windows[key]

    def eval_windows(
            self, tokenizer, dataset: str, eval_fraction: float, seqlen: int,
            limit: int) -> torch.Tensor:
        """Windows of the held-out share of ``dataset`` (its end; wikitext2's test split)."""
        _, eval_text = self.texts(dataset, eval_fraction)
        key = (id(tokenizer), dataset, eval_fraction, seqlen, limit)
        if key not in self._windows:
            self._windows[key] = evaluation_windows(tokenizer, eval_text, seqlen, limit)
        return self._windows[key]

    def model(self, name: str, dtype: str, device: torch.device):
        """The float model on ``device``: a fresh load, or a copy of the one kept."""
        if not self.keep:
            return loading.load_model(name, dtype).to(device)
        key = (name, dtype)
        if key not in self._models:
            self._models[key] = loading.load_model(name, dtype)
        return copy.deepcopy(self._models[key]).to(device)
