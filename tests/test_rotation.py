# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""--rotation fused_no_fx inside brevitas_dmx_llm --dmx, for every method."""

import json

from conftest import tiny_llama
from conftest import tiny_run_argv
import pytest
import torch

from brevitas_dmx import llm
from brevitas_dmx import pareto
from brevitas_dmx.llm_args import build_parser


def _rotation_args(*extra):
    return build_parser().parse_args(["--model", "unused", "--rotation", "fused_no_fx", *extra])


def _calibration(vocab_size: int, seqlen: int = 16):
    ids = torch.randint(0, vocab_size, (seqlen,), generator=torch.Generator().manual_seed(0))
    return [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}]


def test_rotation_keeps_the_float_function():
    model = tiny_llama()
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    with torch.no_grad():
        before = model(ids).logits
        llm.rotate(_rotation_args(), model, _calibration(model.config.vocab_size))
        after = model(ids).logits
    assert torch.allclose(before, after, atol=1e-4)


def test_rotation_changes_the_weights_it_quantizes():
    model = tiny_llama()
    before = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    llm.rotate(_rotation_args(), model, _calibration(model.config.vocab_size))
    after = model.model.layers[0].self_attn.q_proj.weight
    assert before.shape == after.shape and not torch.allclose(before, after, atol=1e-3)


def test_rotated_model_no_longer_ties_its_head():
    from conftest import tiny_llama_config
    from transformers import LlamaForCausalLM
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(tie_word_embeddings=True)).eval()
    with torch.no_grad():  # a final norm with scales of its own, merged into the head only
        model.model.norm.weight.uniform_(0.5, 1.5)
    llm.rotate(_rotation_args(), model, _calibration(model.config.vocab_size))
    assert model.config.tie_word_embeddings is False
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


def _argv(model, data, out, method, *extra):
    return tiny_run_argv(
        model,
        data,
        out,
        "--nsamples",
        "8",
        "--dmx-method",
        method,
        "--dmx-target-bits",
        "5.5",
        "--dmx-steps",
        "4",
        "--dmx-batch-size",
        "4",
        "--dmx-sensitivity-samples",
        "2",
        "--dmx-skip-baselines",
        "--rotation",
        "fused_no_fx",
        *extra)


@pytest.mark.parametrize("method", ["dmx", "fisher"])
def test_method_runs_on_the_rotated_model(tiny_folder, text_file, tmp_path, method):
    assert llm.main(_argv(tiny_folder, text_file, tmp_path, method)) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["rotation"] == "fused_no_fx-had"
    assert metrics["avg_bits"] <= 5.5 + 1e-9


def test_rotated_scores_are_cached_apart(tiny_folder, text_file, tmp_path):
    cache = tmp_path / "scores.json"
    for name, rotation in (("plain", []), ("rotated", ["--rotation", "fused_no_fx"])):
        argv = _argv(
            tiny_folder,
            text_file,
            tmp_path / name,
            "fisher",
            "--dmx-sensitivity-cache",
            str(cache))
        argv = argv[:argv.index("--rotation")] + argv[argv.index("--rotation") + 2:] + rotation
        assert llm.main(argv) == 0
    entries = json.loads(cache.read_text())
    scores = [entry["scores"] for entry in entries.values()]
    assert len(entries) == 2 and scores[0] != scores[1]


def test_other_rotations_are_refused_naming_the_one_that_runs(
        tiny_folder, text_file, tmp_path, capsys, no_model_loading):
    argv = _argv(tiny_folder, text_file, tmp_path, "fisher")
    argv[argv.index("fused_no_fx")] = "fx"
    assert llm.main(argv) == 2
    assert "--rotation fx: a dMX run applies --rotation fused_no_fx" in capsys.readouterr().err


def test_rotation_options_without_a_rotation_are_refused(
        tiny_folder, text_file, tmp_path, capsys, no_model_loading):
    argv = _argv(tiny_folder, text_file, tmp_path, "fisher")
    argv = argv[:argv.index("--rotation")] + argv[argv.index("--rotation") + 2:]
    assert llm.main(argv + ["--rotation-mode", "ort"]) == 2
    assert "--rotation-mode set how the model is rotated" in capsys.readouterr().err


def test_pareto_labels_rotated_points_apart(tiny_folder, text_file, tmp_path):
    args = pareto.build_parser().parse_args(
        [
            "--model",
            tiny_folder,
            "--dataset",
            text_file,
            "--methods",
            "uniform",
            "fisher",
            "--targets",
            "5",
            "--output",
            str(tmp_path)
        ])
    labels = [label for label, _ in pareto.plan_points(args, ["--rotation", "fused_no_fx"])]
    assert "fisher-auto-rotated-5" in labels and "uniform-e2m1-rotated" in labels


def test_rotated_results_are_a_series_of_their_own():
    record = {"method": "fisher", "ladder": "e2m1,e2m3,e4m3", "rotation": "fused_no_fx-had"}
    assert pareto._series(record) == "fisher (e2m1,e2m3,e4m3) rotated"
