# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Shared fixtures: tiny random models and MX-stressing data, all made here."""

from brevitas import config
from brevitas.graph.quantize import layerwise_quantize
import brevitas.nn as qnn
import pytest
import torch
from torch import nn

OCP_FORMATS = {
    # name: (exponent bits, mantissa bits, ml_dtypes type name, max normal)
    "e2m1": (2, 1, "float4_e2m1fn", 6.0),
    "e2m3": (2, 3, "float6_e2m3fn", 7.5),
    "e3m2": (3, 2, "float6_e3m2fn", 28.0),
    "e4m3": (4, 3, "float8_e4m3fn", 448.0),
    "e5m2": (5, 2, "float8_e5m2", 57344.0),
}


def mx_stress_tensor(rows: int = 48, cols: int = 256, seed: int = 0) -> torch.Tensor:
    """Rows with very different magnitudes, all-zero blocks, outliers, and blocks whose small
    elements fall in the element formats' subnormal range."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g)
    x = x * torch.exp2(torch.randint(-30, 30, (rows, 1), generator=g).float())
    x[:, :32] = 0.0  # one all-zero block per row
    x[::3, 40] *= 1e3  # outliers: the rest of their block becomes subnormal or zero
    x[1::3, 64:96] *= torch.logspace(-6, 0, 32)  # a block spanning six decades
    return x


def tiny_llama_config(**overrides):
    from transformers import LlamaConfig
    kwargs = dict(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False)
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def tiny_llama(seed: int = 0):
    from transformers import LlamaForCausalLM
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config())
    model.eval()
    return model


def dmx_layer_map(weight_quant, input_quant):
    return {
        nn.Linear:
            (
                qnn.QuantLinear,
                {
                    "weight_quant": weight_quant,
                    "input_quant": input_quant,
                    "return_quant_tensor": False
                }),
    }


def quantize_tiny_llama(weight_quant, input_quant, seed: int = 0):
    """A tiny random Llama with every Linear but the LM head quantized, float weights loaded."""
    model = tiny_llama(seed)
    return layerwise_quantize(
        model, dmx_layer_map(weight_quant, input_quant), name_blacklist=["lm_head"])


@pytest.fixture
def compiled_kernels():
    """The torch.compile'd element kernels (``functional.compiled_kernels()``), for the test to
    hand to the kernel functions or to its model (``use_compiled_kernels``). Nothing to restore
    after: the choice of kernels belongs to the caller or to the model, never to the process."""
    from brevitas_dmx import functional
    return functional.compiled_kernels()


@pytest.fixture
def ignore_missing_keys():
    previous = config.IGNORE_MISSING_KEYS
    config.IGNORE_MISSING_KEYS = True
    yield
    config.IGNORE_MISSING_KEYS = previous


WORDS = (
    "the quick brown fox jumps over a lazy dog while seven small birds sing about rivers "
    "mountains numbers and the long history of quantized floating point formats").split()


def local_text(n_lines: int = 400, seed: int = 0) -> str:
    """Made-up English-like text, different every line."""
    import random
    rng = random.Random(seed)
    return "\n".join(
        " ".join(rng.choice(WORDS)
                 for _ in range(rng.randint(12, 24))) + "."
        for _ in range(n_lines)) + "\n"


def tiny_run_argv(model, data, out, *extra):
    """A brevitas_dmx_llm --dmx command line for a quick run on a tiny model and local text:
    32-token windows, 16 calibration samples, 4 evaluation windows; ``extra`` adds or overrides
    flags (argparse keeps the last value of a flag)."""
    return [
        "--model",
        model,
        "--dataset",
        data,
        "--seqlen",
        "32",
        "--nsamples",
        "16",
        "--dmx",
        "--dmx-eval-windows",
        "4",
        "--dmx-output",
        str(out),
        *extra
    ]


def save_tiny_llama_folder(path, vocab_size: int = 96, seed: int = 0, add_bos: bool = False) -> str:
    """A tiny random Llama and a BPE tokenizer trained here, saved as a model folder. With
    ``add_bos`` the tokenizer puts ``<s>`` before every text, as Llama-3's and Gemma's do."""
    from tokenizers import models
    from tokenizers import pre_tokenizers
    from tokenizers import processors
    from tokenizers import Tokenizer
    from tokenizers import trainers
    from transformers import LlamaForCausalLM
    from transformers import PreTrainedTokenizerFast
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"])
    tokenizer.train_from_iterator(local_text(200, seed=seed).splitlines(), trainer)
    if add_bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(vocab_size=len(fast)))
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return str(path)


def write_tiny_task(folder) -> str:
    """A four-choice lm-eval task (``tiny_mc``) over made-up items, as a local task YAML."""
    import json
    import os
    os.makedirs(folder, exist_ok=True)
    data = os.path.join(folder, "tiny_mc.jsonl")
    with open(data, "w") as f:
        for i, word in enumerate(WORDS[:8]):
            item = {
                "question": f"the {word} and the",
                "choices": ["quick fox", "lazy dog", "seven birds", "long rivers"],
                "label": i % 4
            }
            f.write(json.dumps(item) + "\n")
    with open(os.path.join(folder, "tiny_mc.yaml"), "w") as f:
        f.write(
            "task: tiny_mc\n"
            "dataset_path: json\n"
            f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
            "test_split: test\n"
            "output_type: multiple_choice\n"
            'doc_to_text: "{{question}}"\n'
            'doc_to_choice: "{{choices}}"\n'
            "doc_to_target: label\n"
            "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    return str(folder)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_tiny_llama_folder(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "text.txt"
    path.write_text(local_text(600))
    return str(path)


@pytest.fixture
def no_model_loading(monkeypatch):
    """Bad input must fail before any model weights are loaded."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    from brevitas_dmx import loading
    monkeypatch.setattr(loading, "load_model", refuse)


def run_formats_used(out) -> set:
    """The formats a finished run's format_map.json puts its layers on."""
    import json
    import os
    with open(os.path.join(out, "format_map.json")) as f:
        formats = json.load(f)
    return {fmt for layer in formats.values() for fmt in layer.values() if isinstance(fmt, str)}
