# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""dMX through stock brevitas_ptq_llm (Brevitas's registries), offline on a tiny Llama."""

import os

from conftest import local_text
from conftest import save_tiny_llama_folder
import datasets
import pytest
import torch

import brevitas_dmx as dmx

PLUGIN = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "brevitas_dmx_plugin.py")


@pytest.fixture
def local_wikitext(monkeypatch):
    """Brevitas only knows hub data sets: serve its 'wikitext2' from locally made text."""
    from brevitas_examples.llm.llm_quant import data_utils

    def load_raw_dataset(dataset_name, split, seed=0, **kwargs):
        return datasets.Dataset.from_dict(
            {"text": local_text(400, seed=hash(split) % 97).splitlines()})

    monkeypatch.setattr(data_utils, "load_raw_dataset", load_raw_dataset)


def test_stock_brevitas_ptq_llm_runs_dmx_through_its_registries(tmp_path, local_wikitext):
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
        "--custom-quantizer",
        f"{PLUGIN}:dmx",
        "--fine-tune",
        "--custom-trainer",
        f"{PLUGIN}:dmx",
        "--max_steps",
        "4",
        "--per_device_train_batch_size",
        "4",
        "--dmx_target_bits",
        "6",
        "--output_dir",
        str(tmp_path / "train")
    ]
    args, extra_args = parse_args(create_args_parser(), argv)
    captured = {}
    import brevitas_dmx.brevitas_plugin as plugin
    original = plugin.BrevitasDMXTrainer.train

    def train_and_capture(self, *a, **k):
        out = original(self, *a, **k)
        captured["model"] = self.model
        return out

    plugin.BrevitasDMXTrainer.train = train_and_capture
    try:
        quantize_llm(args, extra_args)
    finally:
        plugin.BrevitasDMXTrainer.train = original
    model = captured["model"]
    assert dmx.dmx_layers(model) == []  # finalized to fixed Brevitas MX quantizers
    fmap = dmx.format_map(model)
    assert len(fmap) == 14 and {e["weight"] for e in fmap.values()} <= {"e2m1", "e4m3"}
    assert dmx.bits_report(model)["simple"] <= 6.0


def test_stock_path_composes_with_rotation_gptq_and_evaluation(tmp_path, local_wikitext):
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
        "--rotation",
        "fused_no_fx",
        "--replace-rmsnorm",
        "--gptq",
        "--eval",
        "--custom-quantizer",
        f"{PLUGIN}:dmx",
        "--fine-tune",
        "--custom-trainer",
        f"{PLUGIN}:dmx",
        "--max_steps",
        "3",
        "--per_device_train_batch_size",
        "4",
        "--dmx_target_bits",
        "5",
        "--output_dir",
        str(tmp_path / "train")
    ]
    args, extra_args = parse_args(create_args_parser(), argv)
    results, model = quantize_llm(args, extra_args)
    assert torch.isfinite(torch.tensor(results["quant_ppl"]))
    assert dmx.dmx_layers(model) == [] and len(dmx.format_map(model)) == 14
    assert dmx.bits_report(model)["simple"] <= 5.0


def test_rotations_train_jointly_with_the_offsets(tmp_path, local_wikitext, monkeypatch):
    from brevitas.utils.parametrization_utils import extract_trainable_rotation_matrices
    from brevitas_examples.common.parse_utils import parse_args
    from brevitas_examples.llm.llm_args import create_args_parser
    from brevitas_examples.llm.main import quantize_llm

    import brevitas_dmx.brevitas_plugin as plugin
    seen = {}
    original = plugin.BrevitasDMXTrainer.train

    def train_and_watch(self, *a, **k):
        rotations = extract_trainable_rotation_matrices(self.model)
        before = [r.detach().clone() for r in rotations]
        offsets = dmx.dmx_offsets(self.model)
        offsets_before = [o.raw_offset.item() for o in offsets]
        out = original(self, *a, **k)
        seen["rotations_moved"] = any(not torch.equal(b, r) for b, r in zip(before, rotations))
        seen["offsets_moved"] = any(
            o.raw_offset.item() != b for o, b in zip(offsets, offsets_before))
        seen["groups"] = len(getattr(self.optimizer, "optimizer", self.optimizer).optimizers)
        return out

    monkeypatch.setattr(plugin.BrevitasDMXTrainer, "train", train_and_watch)
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
        "--rotation",
        "fused_no_fx",
        "--replace-rmsnorm",
        "--custom-quantizer",
        f"{PLUGIN}:dmx",
        "--fine-tune",
        "--custom-trainer",
        f"{PLUGIN}:dmx",
        "--max_steps",
        "3",
        "--per_device_train_batch_size",
        "4",
        "--dmx_target_bits",
        "6",
        "--dmx_learn_rotations",
        "true",
        "--output_dir",
        str(tmp_path / "train")
    ]
    args, extra_args = parse_args(create_args_parser(), argv)
    quantize_llm(args, extra_args)
    assert seen == {"rotations_moved": True, "offsets_moved": True, "groups": 2}
