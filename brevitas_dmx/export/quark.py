# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""A Hugging Face checkpoint in AMD Quark's format, for transformers (with amd-quark) and vLLM.

``export_quark(model, directory, tokenizer)`` writes a finalized mixed MX model as Quark's own
exporter would: ``config.json`` with a ``quantization_config`` (``quant_method: "quark"``, one
``layer_quant_config`` entry per quantized layer, by exact name, ``exclude`` for the Linear
layers left in float), the tokenizer files, and ``model.safetensors`` holding each quantized
layer's packed element codes (``weight``, uint8) and E8M0 block scales (``weight_scale``, uint8
biased exponents), everything else in the model's own dtype. Inputs are quantized dynamically
(``is_dynamic: true``): no input scale is stored. Only safetensors is needed to write it.

What a runtime can serve sets what is refused, each with a message:

* The scale rule must be ``even``, Quark's (and vLLM's) rule; a floor or nonclip model would
  load, but its inputs would be quantized with other block scales than the ones it was
  evaluated with (``--dmx-scale-rule even``).
* Layers a runtime fuses (q/k/v of one attention, gate/up of one MLP) must share one format
  (vLLM refuses shards with different schemes; ``--dmx-tie qkv-gateup``).
* MXFP8 E4M3 weights are written in the ``per_block`` spelling (``block_size [1, 32]``,
  weights as ``float8_e4m3fn``, scales as uint8 E8M0 like the other formats), as Quark 0.13
  refuses ``per_group`` for ``fp8_e4m3``: transformers with amd-quark loads it exactly (scales
  stored as ``float8_e8m0fnu`` instead are read as values and give wrong weights); how vLLM
  serves it is not verified (docs/export.md), and the export warns. Quark 0.13 cannot quantize
  MXFP8 inputs dynamically (``per_group``: refused; ``per_block``: no kernel), so MXFP8 inputs
  are refused, as is E5M2 in either role.
"""

import json
import os
from typing import Dict, List
import warnings

import numpy as np
import torch
from torch import nn

from brevitas_dmx.config import TIE_PRESETS
from brevitas_dmx.export.checkpoint import float_state_dict
from brevitas_dmx.export.checkpoint import mx_layer_quantizers
from brevitas_dmx.export.checkpoint import pack_codes
from brevitas_dmx.export.checkpoint import untied
from brevitas_dmx.export.checkpoint import weight_codes

__all__ = [
    "check_fused_layers",
    "export_quark",
    "FUSED_LAYERS",
    "QUARK_INPUT_FORMATS",
    "QUARK_WEIGHT_FORMATS",
    "quark_quantization_config"
]

WEIGHTS = "model.safetensors"
BLOCK_SIZE = 32
# The leaf names whose layers (under one parent) a runtime fuses into one matrix.
FUSED_LAYERS = TIE_PRESETS["qkv-gateup"]
# Quark's dtype names of the MX element formats it serves per group.
_GROUP_DTYPES = {"e2m1": "fp4", "e2m3": "fp6_e2m3", "e3m2": "fp6_e3m2"}
# What a Quark checkpoint holds exactly: MXFP4 and both MXFP6 as weights and (dynamic) inputs,
# MXFP8 E4M3 as weights only (Quark 0.13 has no dynamic MXFP8 input quantizer).
QUARK_INPUT_FORMATS = frozenset(_GROUP_DTYPES)
QUARK_WEIGHT_FORMATS = QUARK_INPUT_FORMATS | {"e4m3"}


def _tensor_spec(fmt: str, role: str, layer: str) -> Dict:
    """Quark's ``QTensorConfig`` dict (as its ``to_dict`` writes it) of one MX tensor."""
    spec = {
        "is_dynamic": role == "input",
        "ch_axis": -1,
        "symmetric": None,
        "round_method": "half_even",
        "scale_type": "float",
        "zero_point_type": "int32",
        "scale_format": "e8m0",
        "scale_calculation_mode": "even",
        "mx_element_dtype": None,
        "observer_cls": "PerBlockMXObserver",
        "is_scale_quant": False,
    }
    if fmt in _GROUP_DTYPES:
        spec.update(
            dtype=_GROUP_DTYPES[fmt], qscheme="per_group", group_size=BLOCK_SIZE, block_size=None)
    elif fmt == "e4m3" and role == "weight":
        spec.update(
            dtype="fp8_e4m3", qscheme="per_block", group_size=None, block_size=[1, BLOCK_SIZE])
    else:
        raise ValueError(
            f"{layer}: {fmt} {role}s have no Quark checkpoint spelling that loads exactly "
            f"(Quark serves MXFP4 and both MXFP6 as weights and inputs, MXFP8 E4M3 as weights "
            f"only); map the layer to another format")
    return spec


def _layer_spec(entry: Dict, layer: str) -> Dict:
    if entry.get("weight") is None:
        raise ValueError(f"{layer}: a layer without a weight quantizer cannot be exported")
    return {
        "input_tensors":
            None if entry.get("input") is None else _tensor_spec(entry["input"], "input", layer),
        "output_tensors": None,
        "weight": _tensor_spec(entry["weight"], "weight", layer),
        "bias": None,
        "target_device": None,
    }


def check_fused_layers(fmap: Dict[str, Dict]) -> None:
    """Raises a ``ValueError`` naming the fused layer groups (``FUSED_LAYERS``) of ``fmap``
    whose layers do not share one weight and input format."""
    split = []
    for leaves in FUSED_LAYERS:
        groups: Dict[str, List[str]] = {}
        for name in fmap:
            parent, _, leaf = name.rpartition(".")
            if leaf in leaves:
                groups.setdefault(parent, []).append(name)
        for names in groups.values():
            formats = {(fmap[n]["weight"], fmap[n]["input"]) for n in names}
            if len(formats) > 1:
                split.append(
                    ", ".join(
                        f"{n} ({fmap[n]['weight']}/{fmap[n]['input'] or 'float'})" for n in names))
    if split:
        raise ValueError(
            "a Quark checkpoint for vLLM needs the layers a runtime fuses to share one format "
            "(weight/input), but these differ: " + "; ".join(split)
            + ". Learn or map them tied: --dmx-tie qkv-gateup")


def quark_quantization_config(fmap: Dict[str, Dict], excluded: List[str]) -> Dict:
    """The ``quantization_config`` of ``config.json`` for the format map ``fmap``: the most
    common layer spec as ``global_quant_config``, every other layer by exact name in
    ``layer_quant_config`` (Quark and vLLM match its keys with fnmatch, first match wins), the
    float Linear layers in ``exclude``."""
    specs = {name: _layer_spec(entry, name) for name, entry in fmap.items()}
    keys = {name: json.dumps(spec, sort_keys=True) for name, spec in specs.items()}
    counts: Dict[str, int] = {}
    for key in keys.values():
        counts[key] = counts.get(key, 0) + 1
    common = max(counts, key=counts.get)
    return {
        "quant_method": "quark",
        "global_quant_config": json.loads(common),
        "layer_quant_config": {
            name: spec for name, spec in specs.items() if keys[name] != common
        },
        "layer_type_quant_config": {},
        "exclude": list(excluded),
        "algo_config": None,
        "softmax_quant_spec": None,
        "kv_cache_quant_config": {},
        "kv_cache_post_rope": False,
        "quant_mode": "eager_mode",
        "export":
            {
                "kv_cache_group": [],
                "min_kv_scale": 0.0,
                "pack_method": "reorder",
                "weight_format": "real_quantized",
                "weight_merge_groups": None,
            },
        "version": "0.13",
    }


def _quantized_tensors(name: str, quant, layer: nn.Module) -> Dict[str, torch.Tensor]:
    """``weight`` and ``weight_scale`` of one quantized layer as Quark stores them."""
    stored = weight_codes(quant, layer)
    biased = torch.from_numpy((stored.exponents + 127).astype(np.uint8))
    if stored.fmt.name == "e4m3":  # the per_block spelling: a float8 weight, uint8 scales
        codes = torch.from_numpy(stored.codes).view(torch.float8_e4m3fn)
        return {f"{name}.weight": codes, f"{name}.weight_scale": biased}
    packed = torch.from_numpy(pack_codes(stored.codes, stored.fmt.bits))
    return {f"{name}.weight": packed, f"{name}.weight_scale": biased}


def export_quark(model: nn.Module, directory: str, tokenizer=None) -> str:
    """Writes the finalized (or format-pinned) Hugging Face model ``model`` to ``directory`` as
    a checkpoint in AMD Quark's format, with ``tokenizer``'s files if given; returns the
    directory. ``AutoModelForCausalLM.from_pretrained(directory)`` loads it where amd-quark is
    installed. Refuses, before writing anything, what a Quark runtime would not serve exactly
    (see the module's documentation)."""
    from safetensors.torch import save_file

    from brevitas_dmx.model import format_map
    from brevitas_dmx.quant.fixed import scale_rule_of
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "save_pretrained"):
        raise TypeError(
            f"export_quark needs a Hugging Face model (with .config); got {type(model).__name__}")
    layers = mx_layer_quantizers(model)
    if not layers:
        raise ValueError("The model has no MX-quantized layers to export.")
    rules = sorted({scale_rule_of(q) for quants in layers.values() for q in quants})
    if rules != ["even"]:
        raise ValueError(
            f"the model's block scales follow the {'/'.join(rules)} rule; Quark and vLLM quantize "
            f"inputs with the even rule, so the checkpoint would not serve the model that was "
            f"evaluated. Quantize with --dmx-scale-rule even (dmx_scale_rule='even')")
    fmap = format_map(model)
    check_fused_layers(fmap)
    if getattr(config, "tie_word_embeddings", False) and any(
            name.rpartition(".")[2] == "lm_head" for name in fmap):
        raise ValueError(
            "the LM head is quantized but shares its weight with the embedding "
            "(tie_word_embeddings): a runtime keeps one float tensor for both, so the quantized "
            "head would not be served. Leave the LM head in float (drop --quantize-last-layer)")
    modules = dict(model.named_modules())
    excluded = [
        name for name, module in modules.items()
        if isinstance(module, nn.Linear) and name not in fmap
    ]
    quantization_config = quark_quantization_config(fmap, excluded)
    mxfp8 = [name for name, entry in fmap.items() if entry["weight"] == "e4m3"]
    if mxfp8:
        warnings.warn(
            f"{len(mxfp8)} layers (e.g. {mxfp8[0]}) have MXFP8 weights, written in Quark's "
            f"per_block spelling: exact in transformers with amd-quark, not verified in vLLM "
            f"(docs/export.md)")
    tensors = untied(float_state_dict(model))
    for name, quants in layers.items():
        weight_quant = next(q for q in quants if q.role == "weight")
        tensors.update(_quantized_tensors(name, weight_quant, modules[name]))
    os.makedirs(directory, exist_ok=True)
    config.save_pretrained(directory)
    path = os.path.join(directory, "config.json")
    with open(path) as f:
        written = json.load(f)
    written["quantization_config"] = quantization_config
    with open(path, "w") as f:
        json.dump(written, f, indent=2)
    save_file(
        {
            k: v.contiguous() for k, v in tensors.items()
        },
        os.path.join(directory, WEIGHTS),
        metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory
