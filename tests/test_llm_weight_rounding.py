# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""--gptq and its kin with --dmx: Brevitas's weight optimizers on the finalized model of every
method, through the brevitas_dmx_llm entrypoint on a tiny Llama trained here on arithmetic
sequences of words (a random model predicts nothing, so rounding could not move its loss in a
meaningful direction; on free text a tiny model barely notices MXFP4)."""

import json
import random

from conftest import tiny_llama_config
from conftest import tiny_run_argv
import pytest
from safetensors.torch import load_file
import torch

from brevitas_dmx import llm

SEQLEN = 32
WORDS = 90
# Budgets low enough that most layers sit on MXFP4, where rounding has error to win back (on
# this model GPTQ leaves E2M3 and E4M3 layers, already within 0.3 % of float, slightly worse).
METHODS = {
    "dmx": ["--dmx-target-bits", "4.5", "--dmx-steps", "4"],
    "fisher": ["--dmx-method", "fisher", "--dmx-target-bits", "4.5"],
    "kl": ["--dmx-method", "kl", "--dmx-target-bits", "4.5"],
    "uniform": ["--dmx-method", "uniform", "--dmx-format", "e2m1"],
    "map": [],  # --dmx-format-map, written by the fixture
}


def sequences_text(lines: int = 800, seed: int = 0) -> str:
    """Lines of words t0..t89 counted up in steps of 1 to 3 (wrapping): predictable from
    context, so that the trained model's loss reflects the precision of its weights."""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        start, step = rng.randrange(WORDS), rng.randint(1, 3)
        out.append(" ".join(f"t{(start + step * i) % WORDS}" for i in range(40)))
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def sequences_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sequences") / "sequences.txt"
    path.write_text(sequences_text())
    return str(path)


@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory, sequences_file):
    """A tiny Llama with a word-level tokenizer, trained 80 steps on the calibration share of
    the sequences text, saved as a model folder."""
    from tokenizers import models
    from tokenizers import pre_tokenizers
    from tokenizers import Tokenizer
    from transformers import LlamaForCausalLM
    from transformers import PreTrainedTokenizerFast
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"t{i}": i + 3 for i in range(WORDS)})
    words = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=words, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(vocab_size=len(tokenizer)))
    text = open(sequences_file).read()
    ids = torch.tensor(tokenizer(text[:len(text) // 2])["input_ids"])
    windows = ids[:len(ids) // SEQLEN * SEQLEN].view(-1, SEQLEN)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(80):
        batch = windows[torch.randint(len(windows), (16,))]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    path = tmp_path_factory.mktemp("trained-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def method_runs(trained_folder, sequences_file, tmp_path_factory):
    """Per method: the run folders without and with --gptq, each with its saved checkpoint."""
    root = tmp_path_factory.mktemp("weight-rounding")
    mixed = {}
    runs = {}
    for method, extra in METHODS.items():
        if method == "map":
            extra = ["--dmx-format-map", str(root / "mixed.json")]
            (root / "mixed.json").write_text(json.dumps(mixed))
        pair = []
        for optimizer in ([], ["--gptq"]):
            out = root / f"{method}{'-gptq' if optimizer else ''}"
            argv = tiny_run_argv(
                trained_folder,
                sequences_file,
                out,
                "--nsamples",
                "64",
                "--dmx-sensitivity-samples",
                "4",
                "--dmx-skip-baselines",
                "--dmx-save-pretrained",
                str(out / "checkpoint"),
                *extra,
                *optimizer)
            assert llm.main(argv) == 0
            pair.append(out)
        if method == "dmx":  # the dMX map, read back as a file by the "map" method
            mixed = json.loads((pair[0] / "format_map.json").read_text())
        runs[method] = pair
    return runs


def metrics(out):
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("method", list(METHODS))
def test_gptq_keeps_the_format_map_of_the_run_without_it(method_runs, method):
    rtn, gptq = method_runs[method]
    assert (gptq / "format_map.json").read_text() == (rtn / "format_map.json").read_text()


@pytest.mark.parametrize("method", list(METHODS))
def test_gptq_packed_weights_differ_from_round_to_nearest(method_runs, method):
    rtn, gptq = (load_file(str(out / "checkpoint" / "packed_weights.safetensors"))
                 for out in method_runs[method])
    codes = [name for name in rtn if name.endswith("codes")] or list(rtn)
    assert rtn.keys() == gptq.keys()
    assert all(not torch.equal(rtn[name], gptq[name]) for name in codes)


@pytest.mark.parametrize("method", list(METHODS))
def test_gptq_lowers_the_calibration_perplexity(method_runs, method):
    rounding = metrics(method_runs[method][1])["weight_rounding"]
    assert rounding["algorithms"] == ["gptq"]
    assert rounding["calibration_ppl"] < rounding["calibration_ppl_rtn"]


def test_gptq_run_records_the_round_to_nearest_perplexity_it_started_from(method_runs):
    rtn, gptq = (metrics(out) for out in method_runs["dmx"])
    assert gptq["weight_rounding"]["rtn_ppl"] == pytest.approx(rtn["quant_ppl"], rel=1e-9)
    assert gptq["quant_ppl"] == gptq["weight_rounding"]["optimized_ppl"] != rtn["quant_ppl"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--gptq", "--gpfq"], "--gptq and --gpfq: choose one"),
        (["--gpxq-act-order"], "--gpxq-act-order tunes --gptq or --gpfq or --qronos; add one"),
        (["--magr-alpha", "0.1"], "--magr-alpha tunes --magr; add one"),
        (["--gptq", "--dmx-method", "float"], "--gptq rounds quantized weights"),
    ])
def test_bad_weight_rounding_flags_are_refused_before_loading(
        no_model_loading, tiny_folder, text_file, tmp_path, capsys, extra, message):
    argv = tiny_run_argv(tiny_folder, text_file, tmp_path, "--dmx-target-bits", "6", *extra)
    assert llm.main(argv) == 2
    assert message in capsys.readouterr().err
