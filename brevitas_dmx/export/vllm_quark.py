# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The MX weight/input format combinations vLLM's Quark OCP MX path serves, as data.

Read from vLLM 0.33.0's source (docs/export.md, "What vLLM's Quark path serves", cites the file
and function of each rule). Paths below are relative to ``vllm/model_executor/``:

* ``layers/quantization/quark/quark.py``, ``QuarkConfig._is_w_ocp_mx_a_x`` with
  ``layers/quantization/utils/ocp_mx_utils.py``, ``ocp_mx_weight_dtype_and_rows``: the config
  loads for MXFP4, MXFP6 E2M3/E3M2 and MXFP8 E4M3 weights (group 32, E8M0 scales) with no
  input quantizer or a *dynamic* MXFP4/MXFP6/MXFP8 one (``LOADED_COMBINATIONS``).
* ``kernels/linear/__init__.py``, ``init_mxfp4/6/8_linear_kernel`` and the kernels they pick:
  MXFP4 and MXFP6 weights run with MXFP4 or MXFP6 inputs or none, not MXFP8 ones on ROCm (no
  kernel there); MXFP8 weights get a kernel that never sees the input config, so their inputs
  are MXFP8 on native kernels and 16-bit elsewhere, whatever the config says
  (``SERVED_COMBINATIONS`` keeps the pairs some kernel runs as written).

``SERVED_COMBINATIONS`` is vLLM's side alone; what this package's Quark export writes is
``QUARK_WEIGHT_FORMATS`` / ``QUARK_INPUT_FORMATS`` of ``brevitas_dmx.export.quark``
(``exportable_combinations`` intersects the two).
"""

from itertools import product
from typing import Dict, FrozenSet, List, Mapping, Optional, Tuple

from brevitas_dmx.formats import element_format
from brevitas_dmx.formats import ladder
from brevitas_dmx.formats import Ladder

__all__ = [
    "check_format_map_served",
    "deployable_combinations",
    "deployable_formats",
    "EXECUTION",
    "exportable_combinations",
    "is_served",
    "LOADED_COMBINATIONS",
    "quark_spec_combination",
    "SERVED_COMBINATIONS",
    "served_formats",
    "served_ladder",
    "VLLM_VERSION",
]

VLLM_VERSION = "0.33.0"
# ocp_mx_utils.OCP_MX_BLOCK_SIZE: the only group size the OCP MX scheme takes.
BLOCK_SIZE = 32

Combination = Tuple[str, Optional[str]]

# Quark's "dtype" per element format as vLLM reads it: ``dtype.replace("fp", "mxfp")`` must be a
# key of ocp_mx_utils._WEIGHT_QUANT_KEY_MAP / _ACTIVATION_QUANT_KEY_MAP ("mxfp8_e5m2" is not).
QUARK_DTYPES: Dict[str, str] = {
    "e2m1": "fp4", "e2m3": "fp6_e2m3", "e3m2": "fp6_e3m2", "e4m3": "fp8_e4m3"
}
_FORMAT_OF_DTYPE = {dtype: name for name, dtype in QUARK_DTYPES.items()}
MX_FORMATS: FrozenSet[str] = frozenset(QUARK_DTYPES)

# Everything QuarkConfig._get_scheme_cls_from_config maps to QuarkOCP_MX (weights x inputs):
# the weight decides the scheme, and any dynamic MX input is accepted next to it.
LOADED_COMBINATIONS: FrozenSet[Combination] = frozenset(
    product(sorted(MX_FORMATS), sorted(MX_FORMATS) + [None]))

_SUB_BYTE = ("e2m1", "e2m3", "e3m2")
# Served as written: a kernel applies the declared input format. MXFP4/MXFP6 weights with MXFP4
# or MXFP6 inputs or none (EmulationMxfp4LinearKernel / EmulationMxfp6LinearKernel take exactly
# these); MXFP8 weights weight-only (Marlin, emulation) or with MXFP8 inputs (the native MXFP8
# kernels quantize inputs to MXFP8 whatever the config says).
SERVED_COMBINATIONS: FrozenSet[Combination] = frozenset(
    [(w, a) for w in _SUB_BYTE for a in _SUB_BYTE + (None,)] + [("e4m3", None), ("e4m3", "e4m3")])

# How each served pair runs, per platform, in vLLM 0.33.0's kernel priority order
# (kernels/linear/__init__.py: _POSSIBLE_MXFP4/MXFP6/MXFP8_KERNELS). "emulation" dequantizes the
# weight and quantize-dequantizes the input with the even scale rule (amd-quark needed), then
# runs a 16-bit GEMM: the only path that applies MXFP6 inputs as written.
_HUMMING_OR_EMULATION = (
    "CUDA sm75+: Humming (the input may run in another format: MXFP6 inputs as FP8 E4M3, or "
    "in 16 bits where it falls back); CUDA without Humming and ROCm: emulation")
EXECUTION: Dict[Combination, str] = dict.fromkeys(SERVED_COMBINATIONS, _HUMMING_OR_EMULATION)
EXECUTION.update(
    {
        ("e2m1", None): "CUDA sm75+: Marlin W4A16 (native); ROCm: emulation",
        ("e2m1", "e2m1"):
            "CUDA sm100+: FlashInfer W4A4 (native); other CUDA sm75+: Marlin, which ignores the "
            "input quantizer (W4A16); ROCm gfx95x: AITER W4A4 (native); other ROCm: emulation",
        ("e4m3", None):
            "CUDA sm100+ and ROCm gfx95x: native kernels, which quantize inputs to MXFP8 anyway; "
            "other CUDA sm75+: Marlin W8A16; other ROCm: emulation (W8A16)",
        ("e4m3", "e4m3"):
            "CUDA sm100+: FlashInfer W8A8 (native); ROCm gfx95x: native W8A8; elsewhere Marlin "
            "or emulation, which leave inputs in 16 bits",
    })


def _format_name(fmt) -> Optional[str]:
    if fmt is None:
        return None
    return element_format(getattr(fmt, "name", fmt)).name


def is_served(weight, input=None) -> bool:
    """Whether vLLM 0.33.0's Quark OCP MX path serves a layer with ``weight`` and ``input``
    element formats as written (``input`` None: weight-only). Names, aliases ('mxfp4') and
    ``ElementFormat`` objects are accepted; unknown names raise ``ValueError``."""
    return (_format_name(weight), _format_name(input)) in SERVED_COMBINATIONS


def served_formats(chain, weights_only: bool = False) -> Tuple[str, ...]:
    """The formats of ``chain`` (a ladder or its name, e.g. 'e2m1,e2m3,e4m3') a layer may end
    on for vLLM when its weight and input take the same format (the search ties them), or, with
    ``weights_only``, as a weight without an input quantizer."""
    return tuple(
        f.name
        for f in ladder(chain).formats
        if is_served(f.name, None if weights_only else f.name))


def served_ladder(chain, weights_only: bool = False) -> Ladder:
    """``chain`` cut to its ``served_formats``, as a ladder; a ``ValueError`` naming the
    refused formats if fewer than two remain (a ladder needs two)."""
    full = ladder(chain)
    kept = served_formats(full, weights_only)
    if len(kept) < 2:
        dropped = [f.name for f in full.formats if f.name not in kept]
        raise ValueError(
            f"ladder {full.name!r} keeps {len(kept)} format(s) vLLM {VLLM_VERSION} serves "
            f"({', '.join(kept) or 'none'}; not {', '.join(dropped)}); a ladder needs two")
    return ladder(",".join(kept))


def _describe(combination: Combination) -> str:
    weight, inp = combination
    return f"{weight or 'float'}/{inp or 'float'}"


def check_format_map_served(fmap: Mapping[str, Mapping], fused: bool = True) -> None:
    """Raises one ``ValueError`` naming every layer of the format map ``fmap`` (``{"layer":
    {"weight": "e2m1", "input": "e2m1", "bits": 4.0}}``, as ``brevitas_dmx.format_map``
    writes it) whose weight/input pair vLLM 0.33.0 does not serve as written. With ``fused``,
    also the q/k/v and gate/up groups that do not share one format (vLLM refuses them:
    ``brevitas_dmx.export.quark.check_fused_layers``)."""
    bad: List[str] = []
    for name, entry in fmap.items():
        try:
            combination = (_format_name(entry.get("weight")), _format_name(entry.get("input")))
        except ValueError as err:
            bad.append(f"{name} ({err})")
            continue
        if combination not in SERVED_COMBINATIONS:
            bad.append(f"{name} ({_describe(combination)})")
    if bad:
        served = ", ".join(_describe(c) for c in sorted(SERVED_COMBINATIONS, key=str))
        raise ValueError(
            f"vLLM {VLLM_VERSION}'s Quark OCP MX path does not serve these layers' weight/input "
            f"formats: {'; '.join(bad)}. It serves: {served}")
    if fused:
        from brevitas_dmx.export.quark import check_fused_layers
        check_fused_layers(
            {
                name: {
                    "weight": entry.get("weight"), "input": entry.get("input")
                } for name, entry in fmap.items()
            })


def exportable_combinations() -> FrozenSet[Combination]:
    """The served pairs ``export_quark`` can also write (its ``QUARK_WEIGHT_FORMATS`` and
    ``QUARK_INPUT_FORMATS``). MXFP8 weights are among them, but their per_block spelling is one
    vLLM 0.33.0 does not load (``quark_spec_combination``; docs/export.md)."""
    from brevitas_dmx.export.quark import QUARK_INPUT_FORMATS
    from brevitas_dmx.export.quark import QUARK_WEIGHT_FORMATS
    return frozenset(
        (w, a)
        for w, a in SERVED_COMBINATIONS
        if w in QUARK_WEIGHT_FORMATS and (a is None or a in QUARK_INPUT_FORMATS))


def _weight_format(spec: Optional[Mapping]) -> str:
    """ocp_mx_utils.ocp_mx_weight_dtype_and_rows, restated: the element format, or a
    ``ValueError`` with the reason vLLM finds no OCP MX scheme."""
    if not isinstance(spec, Mapping):
        raise ValueError("no weight quantizer (vLLM's OCP MX scheme needs one)")
    fmt = _FORMAT_OF_DTYPE.get(spec.get("dtype"))
    if fmt is None:
        raise ValueError(f"weight dtype {spec.get('dtype')!r} is not an OCP MX weight dtype")
    if spec.get("qscheme") == "per_group":
        if spec.get("group_size") != BLOCK_SIZE or spec.get("scale_format") != "e8m0":
            raise ValueError("per_group MX weights need group_size 32 and scale_format e8m0")
        return fmt
    if spec.get("qscheme") == "per_block":
        # vLLM takes the 2-D spelling only for the unpacked MXFP8, with its scales declared as
        # float8_e8m0fnu and symmetric: anything else finds no scheme (NotImplementedError).
        block = list(spec.get("block_size") or [])
        if (fmt != "e4m3" or len(block) != 2 or block[1] != BLOCK_SIZE or
                spec.get("scale_type") != "float8_e8m0fnu" or spec.get("symmetric") is not True or
                spec.get("is_dynamic")):
            raise ValueError(
                "per_block MX weights need fp8_e4m3, block_size [R, 32], scale_type "
                "float8_e8m0fnu, symmetric true and static")
        return fmt
    raise ValueError(f"weight qscheme {spec.get('qscheme')!r} is not an OCP MX one")


def _input_format(spec: Optional[Mapping]) -> Optional[str]:
    """The input branch of QuarkConfig._is_w_ocp_mx_a_x, restated for MX inputs."""
    if spec is None:
        return None
    if not spec.get("is_dynamic"):
        raise ValueError("static input scales: the OCP MX scheme quantizes inputs dynamically")
    dtype = spec.get("dtype")
    if dtype == "fp8_e4m3":
        if spec.get("qscheme") == "per_group" and spec.get("group_size") == BLOCK_SIZE:
            return "e4m3"
        # kFp8DynamicTensorSym is no key of _ACTIVATION_QUANT_KEY_MAP: QuarkOCP_MX.__init__
        # finds no input dtype for it.
        raise ValueError("FP8 inputs that are not MXFP8 (per_group, 32) have no OCP MX kernel")
    fmt = _FORMAT_OF_DTYPE.get(dtype)
    if fmt is None:
        raise ValueError(f"input dtype {dtype!r} is not one vLLM's OCP MX scheme takes")
    return fmt


def quark_spec_combination(layer_spec: Mapping) -> Combination:
    """The (weight, input) element formats vLLM 0.33.0 reads from one Quark layer spec (a
    ``global_quant_config`` or ``layer_quant_config`` value), or a ``ValueError`` with the reason
    it would find no OCP MX scheme for it. A restatement of its parser, for checks without
    vLLM installed (importing vLLM needs its CUDA-era dependencies)."""
    if layer_spec.get("output_tensors") or layer_spec.get("bias"):
        raise ValueError("output or bias quantization: vLLM's Quark path refuses it")
    return _weight_format(layer_spec.get("weight")), _input_format(layer_spec.get("input_tensors"))


def deployable_combinations() -> FrozenSet[Combination]:
    """The served pairs a checkpoint of ``export_quark`` carries in a spelling vLLM 0.33.0 loads:
    ``exportable_combinations`` without MXFP8 weights, whose per_block spelling (the one Quark
    0.13 reads) vLLM does not load. What ``--dmx-deploy vllm-quark`` searches inside."""
    return frozenset((w, a) for w, a in exportable_combinations() if w != "e4m3")


def deployable_formats(chain, weights_only: bool = False) -> Tuple[str, ...]:
    """The formats of ``chain`` a layer may end on under ``--dmx-deploy vllm-quark``: as weight
    and input alike (the search ties them), or as a weight alone with ``weights_only``."""
    allowed = deployable_combinations()
    return tuple(
        f.name
        for f in ladder(chain).formats
        if (f.name, None if weights_only else f.name) in allowed)
