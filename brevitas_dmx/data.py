# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Text for calibration and evaluation: local files, an installed package, or hub data sets.

A text is split by characters into a calibration part (the first ``1 - eval_fraction``) and an
evaluation part (the rest), so the two never overlap. Calibration samples are non-overlapping
windows of the calibration tokens in a seeded random order; evaluation windows are consecutive
non-overlapping windows of the evaluation tokens.
"""

import bz2
import html
import importlib.util
import json
import os
import random
import re
from typing import Dict, List, Optional

import torch

# An offline source of real English text: the Wikipedia dump that the gensim wheel ships for its
# tests, cleaned like WikiText (article titles as " = Title = " lines).
GENSIM_ENWIKI = "enwiki-gensim"
_GENSIM_FILE = (
    "test", "test_data", "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
HUB_DATASETS = ("wikitext2", "c4", "pile", "fineweb")
LOCAL_SUFFIXES = (".txt", ".jsonl")


class DataError(ValueError):
    """Bad data input, with a message that says what to change."""


def check_dataset_name(name: str) -> None:
    """Fails fast (before any model is loaded) on an unusable ``--dataset``."""
    if name in HUB_DATASETS or name == GENSIM_ENWIKI:
        return
    if not name.endswith(LOCAL_SUFFIXES):
        raise DataError(
            f"--dataset {name!r}: use one of {', '.join(HUB_DATASETS)}, {GENSIM_ENWIKI} (offline "
            f"Wikipedia text from the installed gensim package), or a local .txt / .jsonl file")
    if not os.path.isfile(name):
        raise DataError(f"--dataset {name!r}: file not found")


def _gensim_enwiki_text() -> str:
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"--dataset {GENSIM_ENWIKI} needs the gensim package: pip install 'gensim==4.4.0'")
    path = os.path.join(spec.submodule_search_locations[0], *_GENSIM_FILE)
    if not os.path.isfile(path):
        raise DataError(f"--dataset {GENSIM_ENWIKI}: {path} is missing from the gensim install")
    from gensim.corpora.wikicorpus import filter_wiki
    with bz2.open(path, "rt", encoding="utf-8") as f:
        xml = f.read()
    articles = []
    for page in re.findall(r"<page>(.*?)</page>", xml, flags=re.S):
        title = re.search(r"<title>(.*?)</title>", page, flags=re.S)
        text = re.search(r"<text[^>]*>(.*?)</text>", page, flags=re.S)
        if not title or not text or ":" in title.group(1):
            continue
        body = filter_wiki(html.unescape(text.group(1)))
        lines = [
            line.strip()
            for line in body.splitlines()
            if len(line.strip()) >= 60 and not line.lstrip().startswith(("|", "!", "*", "{"))
        ]
        if lines:
            articles.append(f" = {title.group(1).strip()} = \n" + "\n".join(lines))
    return "\n".join(articles)


def load_text(name: str) -> str:
    """The raw text of a local .txt / .jsonl file (field "text") or of ``enwiki-gensim``."""
    check_dataset_name(name)
    if name == GENSIM_ENWIKI:
        return _gensim_enwiki_text()
    if name in HUB_DATASETS:
        raise DataError(f"{name} is a hub data set: it is loaded through Brevitas, not as text")
    if name.endswith(".jsonl"):
        texts = []
        with open(name) as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                record = json.loads(line)
                if "text" not in record:
                    raise DataError(f"{name}:{number}: a .jsonl line needs a 'text' field")
                texts.append(record["text"])
        return "\n\n".join(texts)
    with open(name, encoding="utf-8") as f:
        return f.read()


def split_text(text: str, eval_fraction: float = 0.4):
    """(calibration text, evaluation text): a split by characters at a line boundary."""
    if not 0 < eval_fraction < 1:
        raise DataError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    cut = int(len(text) * (1 - eval_fraction))
    newline = text.find("\n", cut)
    cut = newline + 1 if newline != -1 else cut
    return text[:cut], text[cut:]


def _tokens(tokenizer, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def calibration_samples(tokenizer,
                        text: str,
                        nsamples: int,
                        seqlen: int,
                        seed: int = 0) -> List[Dict]:
    """``nsamples`` non-overlapping windows of ``seqlen`` tokens, as causal-LM examples."""
    tokens = _tokens(tokenizer, text)
    available = len(tokens) // seqlen
    if available < nsamples:
        raise DataError(
            f"The calibration part has {len(tokens)} tokens: {available} windows of --seqlen "
            f"{seqlen}, fewer than --nsamples {nsamples}. Lower --nsamples or --seqlen, or use "
            f"more text.")
    starts = list(range(available))
    random.Random(seed).shuffle(starts)
    windows = [tokens[s * seqlen:(s + 1) * seqlen] for s in starts[:nsamples]]
    return [{"input_ids": w, "attention_mask": torch.ones_like(w), "labels": w} for w in windows]


def evaluation_windows(tokenizer, text: str, seqlen: int, limit: Optional[int]) -> torch.Tensor:
    """Consecutive non-overlapping windows (at most ``limit``) of the evaluation tokens."""
    tokens = _tokens(tokenizer, text)
    count = len(tokens) // seqlen
    if count == 0:
        raise DataError(
            f"The evaluation part has {len(tokens)} tokens, less than one --seqlen {seqlen} "
            f"window. Lower --seqlen or use more text.")
    if limit is not None:
        count = min(count, limit)
    return tokens[:count * seqlen].view(count, seqlen)
