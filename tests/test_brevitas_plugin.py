# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""dMX through stock brevitas_ptq_llm (Brevitas's registries), offline on a tiny Llama."""

import json
import os

from conftest import local_text
from conftest import save_tiny_llama_folder
import datasets
import pytest
import torch

import brevitas_dmx as dmx
import brevitas_dmx.brevitas_plugin as plugin

PLUGIN = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "brevitas_dmx_plugin.py")


@pytest.fixture
def local_wikitext(monkeypatch):
    """Brevitas only knows hub data sets: serve its 'wikitext2' from locally made text."""
    from brevitas_examples.llm.llm_quant import data_utils

    def load_raw_dataset(dataset_name, split, seed=0, **kwargs):
        lines = local_text(400, seed=len(split)).splitlines()
        return datasets.Dataset.from_dict({"text": lines})

    monkeypatch.setattr(data_utils, "load_raw_dataset", load_raw_dataset)


def _run_stock_brevitas(tmp_path, *flags, target="6", steps="4", quantizer="dmx"):
    """``brevitas_ptq_llm`` with the dMX quantizer and trainer plugins on a tiny local Llama."""
    from brevitas_examples.common.parse_utils import parse_args
    from brevitas_examples.llm.llm_args import create_args_parser
    from brevitas_examples.llm.main import quantize_llm
    folder = save_tiny_llama_folder(tmp_path / "tiny")
    argv = [
        "--model",
        folder,
        "--dataset",
        "wikitext2",
        "--seqlen",
        "32",
        "--nsamples",
        "8",
        "--dtype",
        "float32",
        *flags,
        "--custom-quantizer",
        f"{PLUGIN}:{quantizer}",
        "--fine-tune",
        "--custom-trainer",
        f"{PLUGIN}:dmx",
        "--max_steps",
        steps,
        "--per_device_train_batch_size",
        "4",
        "--dmx_target_bits",
        target,
        "--output_dir",
        str(tmp_path / "train")
    ]
    args, extra_args = parse_args(create_args_parser(), argv)
    return quantize_llm(args, extra_args)


@pytest.fixture
def watched_training(monkeypatch):
    """Records, around the dMX trainer's train(), whether offsets and rotations moved."""
    from brevitas.utils.parametrization_utils import extract_trainable_rotation_matrices
    seen = {}
    original = plugin.BrevitasDMXTrainer.train

    def train_and_watch(self, *args, **kwargs):
        rotations = extract_trainable_rotation_matrices(self.model)
        rotations_before = [r.detach().clone() for r in rotations]
        offsets = dmx.dmx_offsets(self.model)
        offsets_before = [o.raw_offset.item() for o in offsets]
        out = original(self, *args, **kwargs)
        seen["model"] = self.model
        seen["rotations_moved"] = any(
            not torch.equal(b, r) for b, r in zip(rotations_before, rotations))
        seen["offsets_moved"] = any(
            o.raw_offset.item() != b for o, b in zip(offsets, offsets_before))
        inner = getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate's wrapper
        seen["optimizers"] = len(getattr(inner, "optimizers", [inner]))
        return out

    monkeypatch.setattr(plugin.BrevitasDMXTrainer, "train", train_and_watch)
    return seen


def test_stock_brevitas_ptq_llm_runs_dmx_through_its_registries(
        tmp_path, local_wikitext, watched_training):
    _run_stock_brevitas(tmp_path, quantizer="dmx-mxfp8")
    model = watched_training["model"]
    assert watched_training["offsets_moved"] and watched_training["optimizers"] == 1
    assert dmx.dmx_layers(model) == []  # finalized to fixed Brevitas MX quantizers
    fmap = dmx.format_map(model)
    assert len(fmap) == 14 and {e["weight"] for e in fmap.values()} <= {"e2m1", "e4m3"}
    assert dmx.bits_report(model)["memory_with_scales"] <= 6.0


def test_stock_path_composes_with_rotation_gptq_and_evaluation(tmp_path, local_wikitext):
    results, model = _run_stock_brevitas(
        tmp_path, "--rotation", "fused_no_fx", "--replace-rmsnorm", "--gptq", "--eval",
        target="5", steps="3")
    assert torch.isfinite(torch.tensor(results["quant_ppl"]))
    assert dmx.dmx_layers(model) == [] and len(dmx.format_map(model)) == 14
    assert dmx.bits_report(model)["memory_with_scales"] <= 5.0


def test_rotations_train_jointly_with_the_offsets(tmp_path, local_wikitext, watched_training):
    _run_stock_brevitas(
        tmp_path,
        "--rotation",
        "fused_no_fx",
        "--replace-rmsnorm",
        "--dmx_learn_rotations",
        "true",
        steps="3")
    assert watched_training["rotations_moved"] and watched_training["offsets_moved"]
    assert watched_training["optimizers"] == 2


@pytest.mark.parametrize(("flag", "value"), [("dmx_momentum", 1.0), ("dmx_lr", 0.0)])
def test_stock_path_refuses_an_out_of_range_budget_setting(tmp_path, flag, value):
    with pytest.raises(ValueError, match=f"^--{flag} must be"):
        plugin.DMXTrainingArguments(output_dir=str(tmp_path), **{flag: value})


def test_accelerate_removes_hooks_from_brevitas_quant_layers():
    """Stock brevitas_ptq_llm calls accelerate's ``remove_hook_from_module`` on the quantized
    model before fine-tuning. accelerate 1.16 makes it read an attribute of every value in a
    module's ``__dict__``, where Brevitas keeps its injector classes, whose look-up of a missing
    name raises ``DependencyError``; pyproject.toml therefore bounds accelerate below 1.16, and
    this test fails the day the bound is lifted without a fix."""
    from accelerate.hooks import add_hook_to_module
    from accelerate.hooks import ModelHook
    from accelerate.hooks import remove_hook_from_module
    import brevitas.nn as qnn

    from brevitas_dmx.quant import DMXFloatAct
    from brevitas_dmx.quant import DMXFloatWeight
    layer = qnn.QuantLinear(
        64, 64, bias=False, weight_quant=DMXFloatWeight, input_quant=DMXFloatAct)
    add_hook_to_module(layer, ModelHook())
    remove_hook_from_module(layer, recurse=True)
    assert not hasattr(layer, "_hf_hook") and not hasattr(layer, "_old_forward")


def test_stock_path_and_the_command_end_on_the_same_format_map(tmp_path, monkeypatch):
    """The same tiny model, calibration samples and settings through stock brevitas_ptq_llm
    with the plugin and through brevitas_dmx_llm --dmx: one pipeline, one format map (5.5 bits:
    the auto ladder E2M1/E2M3, annealed, so no random draws in training)."""
    from brevitas_examples.common.parse_utils import parse_args
    from brevitas_examples.llm import main as brevitas_main
    from brevitas_examples.llm.llm_args import create_args_parser

    from brevitas_dmx import llm
    from brevitas_dmx.data import calibration_samples
    from brevitas_dmx.data import split_text
    from brevitas_dmx.loading import load_tokenizer
    folder = save_tiny_llama_folder(tmp_path / "tiny")
    text = tmp_path / "text.txt"
    text.write_text(local_text(400))
    settings = ["--seqlen", "32", "--nsamples", "8"]
    out = tmp_path / "command"
    assert llm.main(
        [
            "--model",
            folder,
            "--dataset",
            str(text),
            *settings,
            "--dmx",
            "--dmx-target-bits",
            "5.5",
            "--dmx-steps",
            "6",
            "--dmx-batch-size",
            "4",
            "--dmx-eval-windows",
            "2",
            "--dmx-skip-baselines",
            "--dmx-output",
            str(out)
        ]) == 0
    command_map = json.loads((out / "format_map.json").read_text())

    calib_text, _ = split_text(text.read_text())
    samples = calibration_samples(load_tokenizer(folder), calib_text, 8, 32, 0)
    served = [{"input_ids": s["input_ids"]} for s in samples]
    monkeypatch.setattr(brevitas_main, "get_dataset_for_model", lambda **kwargs: served)
    argv = [
        "--model",
        folder,
        "--dataset",
        "wikitext2",
        *settings,
        "--dtype",
        "float32",
        "--custom-quantizer",
        f"{PLUGIN}:dmx",
        "--fine-tune",
        "--custom-trainer",
        f"{PLUGIN}:dmx",
        "--max_steps",
        "6",
        "--per_device_train_batch_size",
        "4",
        "--dmx_target_bits",
        "5.5",
        "--data_seed",
        "0",
        "--output_dir",
        str(tmp_path / "train")
    ]
    args, extra_args = parse_args(create_args_parser(), argv)
    _, model = brevitas_main.quantize_llm(args, extra_args)
    stock_map = dmx.format_map(model)
    assert len({e["weight"] for e in command_map.values()}) == 2  # a mix: a map that can differ
    assert stock_map == command_map
