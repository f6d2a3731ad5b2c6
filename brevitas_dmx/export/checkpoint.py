# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""A reloadable checkpoint of a mixed MX model, and its packed (deployed) weights.

``save_pretrained(model, dir)`` writes the float weights (``model.safetensors``), the model's
Hugging Face config, the format map and the quantizer settings (``dmx_quant.json``);
``load_pretrained(dir)`` rebuilds the same finalized model: float model from the config, the
same layer map through ``layerwise_quantize``, the formats pinned, ``finalize``. No retraining.

``pack_weights(model, path)`` stores every MX weight as it would live in memory: element codes
(bit-packed: two MXFP4 codes per byte, four MXFP6 codes per three bytes, one MXFP8 code per byte)
and one E8M0 byte per block of 32, in a safetensors file. ``packed_size`` is that payload in
bytes, which equals the quantized weights' element count times the memory-weighted average bits
with scales, divided by 8.
"""

import json
import os
from typing import Dict, NamedTuple, Optional

import numpy as np
import torch
from torch import nn

from brevitas_dmx.formats import E8M0_SCALE_BITS
from brevitas_dmx.formats import element_format
from brevitas_dmx.formats import ElementFormat

QUANT_CONFIG = "dmx_quant.json"
WEIGHTS = "model.safetensors"
PACKED = "packed_weights.safetensors"
_QUANT_MODULE_NAMES = ("weight_quant", "input_quant", "output_quant", "bias_quant", "act_quant")


def mx_layer_quantizers(model: nn.Module):
    """The fixed or learnable MX quantizers of each quantized layer, by layer name."""
    from brevitas_dmx.model import mx_quantizers
    layers = {}
    for name, quant in mx_quantizers(model):
        layers.setdefault(name, []).append(quant)
    return layers


def float_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The float model's tensors: everything outside the quantizer submodules."""
    return {
        key: value.detach().contiguous().cpu()
        for key, value in model.state_dict().items()
        if not any(f".{part}." in f".{key}" for part in _QUANT_MODULE_NAMES)
    }


def untied(tensors: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``tensors`` with each tied tensor (e.g. embeddings and LM head) kept once, under its first
    name, as safetensors requires."""
    seen = {}
    for key in list(tensors):
        pointer = tensors[key].data_ptr()
        if pointer in seen and tensors[seen[pointer]].shape == tensors[key].shape:
            del tensors[key]
        else:
            seen[pointer] = key
    return tensors


def save_pretrained(model: nn.Module, directory: str) -> str:
    """Writes a finalized (or format-pinned) Hugging Face model so ``load_pretrained`` rebuilds
    it exactly."""
    from safetensors.torch import save_file

    from brevitas_dmx.model import format_map
    from brevitas_dmx.quant.fixed import scale_rule_of
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "save_pretrained"):
        raise TypeError(
            f"save_pretrained needs a Hugging Face model (with .config); got {type(model).__name__}"
        )
    layers = mx_layer_quantizers(model)
    if not layers:
        raise ValueError("The model has no MX-quantized layers to save.")
    fmap = format_map(model)
    scale_rule = scale_rule_of(next(iter(layers.values()))[0])
    os.makedirs(directory, exist_ok=True)
    config.save_pretrained(directory)
    tensors = untied(float_state_dict(model))
    save_file(tensors, os.path.join(directory, WEIGHTS), metadata={"format": "pt"})
    settings = {
        "format_map": fmap,
        "weights_only": all(entry["input"] is None for entry in fmap.values()),
        "scale_rule": scale_rule,
        "block_size": 32,
        # The float dtype the weights were saved in: rebuilding in another one would change the
        # logits.
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "library": "brevitas_dmx",
    }
    with open(os.path.join(directory, QUANT_CONFIG), "w") as f:
        json.dump(settings, f, indent=1)
    return directory


def load_pretrained(directory: str, dtype: Optional[torch.dtype] = None) -> nn.Module:
    """Rebuilds the finalized mixed MX model that ``save_pretrained`` wrote."""
    from brevitas import config as brevitas_config
    from brevitas.graph.quantize import layerwise_quantize
    import brevitas.nn as qnn
    from safetensors.torch import load_file
    from transformers import AutoConfig
    from transformers import AutoModelForCausalLM

    from brevitas_dmx.model import apply_format_map
    from brevitas_dmx.model import finalize
    from brevitas_dmx.quant import DMXFloatAct
    from brevitas_dmx.quant import DMXFloatWeight
    path = os.path.join(directory, QUANT_CONFIG)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: not a directory written by save_pretrained")
    with open(path) as f:
        settings = json.load(f)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(directory))
    if dtype is None and "dtype" in settings:
        dtype = getattr(torch, settings["dtype"])
    if dtype is not None:
        model = model.to(dtype)
    names = list(settings["format_map"])
    modules = dict(model.named_modules())
    missing = [n for n in names if not isinstance(modules.get(n), nn.Linear)]
    if missing:
        raise ValueError(f"Layers {missing[:5]} of the format map are not Linear layers here")
    weight = DMXFloatWeight.let(dmx_scale_rule=settings["scale_rule"])
    act = None if settings["weights_only"] else DMXFloatAct.let(
        dmx_scale_rule=settings["scale_rule"])
    layer_map = {
        nn.Linear:
            (
                qnn.QuantLinear, {
                    "weight_quant": weight, "input_quant": act, "return_quant_tensor": False
                })
    }
    unquantized = [
        n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in names
    ]
    model = layerwise_quantize(model, layer_map, name_blacklist=unquantized)
    previous = brevitas_config.IGNORE_MISSING_KEYS
    brevitas_config.IGNORE_MISSING_KEYS = True
    try:
        result = model.load_state_dict(load_file(os.path.join(directory, WEIGHTS)), strict=False)
    finally:
        brevitas_config.IGNORE_MISSING_KEYS = previous
    real_missing = [
        k for k in result.missing_keys
        if not any(f".{part}." in f".{k}" for part in _QUANT_MODULE_NAMES)
    ]
    tied = getattr(model, "_tied_weights_keys", None) or []
    real_missing = [k for k in real_missing if k not in tied and not k.endswith("lm_head.weight")]
    if real_missing or result.unexpected_keys:
        raise ValueError(
            f"{directory}: weights do not match the model (missing {real_missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]})")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    apply_format_map(model, settings["format_map"])
    model.eval()
    return finalize(model)


def _ml_dtype(fmt):
    """The ml_dtypes type of an OCP element format (its codes are the OCP bit patterns)."""
    import ml_dtypes
    return {
        "e2m1": ml_dtypes.float4_e2m1fn,
        "e2m3": ml_dtypes.float6_e2m3fn,
        "e3m2": ml_dtypes.float6_e3m2fn,
        "e4m3": ml_dtypes.float8_e4m3fn,
        "e5m2": ml_dtypes.float8_e5m2,
    }[fmt.name]


def _codes(values: np.ndarray, fmt) -> np.ndarray:
    """Element codes (uint8, low bits) of values that are exactly on the format's grid."""
    dtype = _ml_dtype(fmt)
    converted = values.astype(dtype)
    if not np.array_equal(converted.astype(np.float32), values):
        raise ValueError(f"values are not on the {fmt.name} grid: was the weight MX-quantized?")
    return converted.view(np.uint8)


def _pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Packs ``bits``-bit codes densely, little-endian within each byte."""
    flat = codes.reshape(-1).astype(np.uint8)
    unpacked = np.unpackbits(flat[:, None], axis=1, bitorder="little")[:, :bits]
    return np.packbits(unpacked.reshape(-1), bitorder="little")


def _unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    stream = np.unpackbits(packed, bitorder="little")[:count * bits].reshape(count, bits)
    padded = np.concatenate([stream, np.zeros((count, 8 - bits), np.uint8)], axis=1)
    return np.packbits(padded, axis=1, bitorder="little").reshape(-1)


class WeightCodes(NamedTuple):
    """A quantized weight as it is stored: element codes (uint8, the OCP bit patterns in the low
    bits, shape [rows, cols]), E8M0 block exponents (int, unbiased, [rows, cols / 32]) and the
    element format."""
    codes: np.ndarray
    exponents: np.ndarray
    fmt: ElementFormat


def weight_codes(quant, layer: nn.Module) -> WeightCodes:
    """The element codes and block exponents of ``layer``'s MX-quantized weight.

    The block scales are found by the functional core's ``_block_scale`` on the float weight in
    its own dtype, under the quantizer's scale rule (``scale_rule_of``), so they are the
    quantizer's own; the codes are then checked to decode to the quantized weight exactly."""
    from brevitas_dmx.functional import _block_scale
    from brevitas_dmx.functional import format_constants
    from brevitas_dmx.functional import math_dtype
    from brevitas_dmx.quant.fixed import scale_rule_of
    fmt = quant.discrete_format()
    with torch.no_grad():
        weight = layer.quant_weight().value.detach().float().cpu()
    if weight.dim() != 2 or weight.shape[-1] % 32:
        raise ValueError(
            f"weight shape {tuple(weight.shape)}: packing needs a 2-d weight whose input size "
            f"is a multiple of the block size 32")
    rows, cols = weight.shape
    float_blocks = layer.weight.detach().cpu().reshape(rows, -1, 32)
    dtype = math_dtype(float_blocks.dtype)
    e, m = (torch.tensor(float(w), dtype=dtype) for w in (fmt.exponent_bits, fmt.mantissa_bits))
    max_exponent, max_normal, _, step_factor = format_constants(e, m)
    with torch.no_grad():
        scale = _block_scale(
            float_blocks, max_exponent, max_normal, step_factor, scale_rule_of(quant))
    exponents = torch.log2(scale.double()).squeeze(-1)
    if not torch.equal(exponents, exponents.round()) or exponents.abs().max() > 127:
        raise ValueError(f"block scales of {fmt.name} are not E8M0 powers of two in 2^-127..2^127")
    scaled = (weight.reshape(rows, -1, 32).double() / scale.double()).float().numpy()
    codes = _codes(scaled, fmt)
    decoded = torch.from_numpy(_decode(codes, fmt)).double() * scale.double()
    if not torch.equal(decoded.reshape(rows, cols), weight.double()):
        raise ValueError(f"the {fmt.name} codes and block scales do not give the quantized weight")
    return WeightCodes(codes.reshape(rows, cols), exponents.to(torch.int64).numpy(), fmt)


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Packs each row of ``codes`` ([rows, cols], uint8) densely, little-endian: two MXFP4 codes
    a byte (low nibble first), four MXFP6 codes in a 24-bit little-endian word, one MXFP8 code a
    byte. Returns [rows, cols * bits / 8] uint8 (``cols * bits`` must be a multiple of 8)."""
    rows, cols = codes.shape
    if cols * bits % 8:
        raise ValueError(f"{cols} codes of {bits} bits do not fill whole bytes")
    return _pack_bits(codes, bits).reshape(rows, cols * bits // 8)


def pack_weights(model: nn.Module, path: str) -> Dict[str, int]:
    """Writes every MX weight as element codes plus E8M0 block scales; returns the payload
    bytes (``{"payload_bytes", "file_bytes", "elements"}``)."""
    from safetensors.numpy import save_file
    layers = mx_layer_quantizers(model)
    modules = dict(model.named_modules())
    tensors, meta, payload, elements = {}, {}, 0, 0
    for name, quants in layers.items():
        weight_quants = [q for q in quants if q.role == "weight"]
        if not weight_quants:
            continue
        stored = weight_codes(weight_quants[0], modules[name])
        packed = pack_codes(stored.codes, stored.fmt.bits).reshape(-1)
        scales = (stored.exponents + 127).astype(np.uint8).reshape(-1)  # E8M0: biased exponent
        tensors[f"{name}.codes"] = packed
        tensors[f"{name}.scales"] = scales
        meta[name] = json.dumps(
            {
                "format": stored.fmt.name, "shape": list(modules[name].weight.shape)
            })
        payload += packed.nbytes + scales.nbytes
        elements += stored.codes.size
    save_file(tensors, path, metadata=meta)
    return {"payload_bytes": payload, "file_bytes": os.path.getsize(path), "elements": elements}


def unpack_weights(path: str) -> Dict[str, torch.Tensor]:
    """The dequantized weights of a packed file, by layer name."""
    from safetensors import safe_open
    out = {}
    with safe_open(path, framework="numpy") as f:
        meta = f.metadata()
        for name, info in meta.items():
            if name == "format":
                continue
            info = json.loads(info)
            fmt = element_format(info["format"])
            rows, cols = info["shape"]
            codes = _unpack_bits(f.get_tensor(f"{name}.codes"), fmt.bits, rows * cols)
            values = _decode(codes, fmt).reshape(rows, cols // 32, 32)
            exponent = f.get_tensor(f"{name}.scales").astype(np.float32) - 127
            scale = np.exp2(exponent).reshape(rows, cols // 32, 1)
            out[name] = torch.from_numpy((values * scale).reshape(rows, cols).astype(np.float32))
    return out


def _decode(codes: np.ndarray, fmt) -> np.ndarray:
    dtype = _ml_dtype(fmt)
    return codes.view(dtype).astype(np.float32)


def packed_size_bits(model: nn.Module) -> int:
    """The bits the packed weights take: elements x (element bits + 8/32), exactly."""
    total = 0
    for name, quants in mx_layer_quantizers(model).items():
        for quant in quants:
            if quant.role == "weight":
                numel = int(quant.size())
                total += numel * quant.discrete_format().bits + numel // 32 * E8M0_SCALE_BITS
    return total
