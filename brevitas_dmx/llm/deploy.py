# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Deployment: what the deployment flags and ``--dmx-deploy`` need (checked before the model
loads), and the files a finished run deploys: a reloadable checkpoint with packed weights, a
QONNX graph, a Quark checkpoint for transformers and vLLM."""

import os
from typing import List

from brevitas_dmx.config import DeployTarget
from brevitas_dmx.config import ScaleRule
from brevitas_dmx.config import TiePreset
from brevitas_dmx.export import export_quark
from brevitas_dmx.export import pack_weights
from brevitas_dmx.export import save_pretrained
from brevitas_dmx.export.quark import check_fused_layers
from brevitas_dmx.export.quark import QUARK_INPUT_FORMATS
from brevitas_dmx.export.quark import QUARK_WEIGHT_FORMATS
from brevitas_dmx.export.vllm_quark import deployable_formats
from brevitas_dmx.formats import DEFAULT_CHAIN
from brevitas_dmx.formats import element_format
from brevitas_dmx.llm.plan import UsageError
from brevitas_dmx.model import check_format_map


def deploy(plan, model, tokenizer, record) -> List[str]:
    """Writes what the deployment flags ask for; returns the paths written."""
    args = plan.args
    written = []
    if args.dmx_save_pretrained:
        save_pretrained(model, args.dmx_save_pretrained)
        packed = pack_weights(
            model, os.path.join(args.dmx_save_pretrained, "packed_weights.safetensors"))
        record.packed_weight_bytes = packed["payload_bytes"]
        written.append(args.dmx_save_pretrained)
    if args.dmx_export_qonnx:
        from brevitas_dmx.export import export_causal_lm_qonnx  # the export extra (onnx)
        export_causal_lm_qonnx(model, args.dmx_export_qonnx, seqlen=plan.seqlen)
        written.append(args.dmx_export_qonnx)
    if args.dmx_export_quark:
        try:
            export_quark(model, args.dmx_export_quark, tokenizer)
        except ValueError as err:
            raise UsageError(f"--dmx-export-quark: {err}") from None
        written.append(args.dmx_export_quark)
    return written


def deploy_chain(args) -> str:
    """The chain ``auto`` picks its two formats from: the default one, or under --dmx-deploy
    vllm-quark its formats that the checkpoint can carry and vLLM loads."""
    if args.dmx_deploy == DeployTarget.VLLM_QUARK:
        return ",".join(deployable_formats(DEFAULT_CHAIN, args.dmx_weights_only))
    return DEFAULT_CHAIN


def check_deploy_target(args, method):
    """(scale rule, tie) of the run: the flags', or what --dmx-deploy vllm-quark needs (the even
    rule, q/k/v and gate/up tied), refusing flags that ask for something else."""
    if args.dmx_deploy != DeployTarget.VLLM_QUARK:
        return args.dmx_scale_rule, args.dmx_tie
    flag = "--dmx-deploy vllm-quark"
    if args.dmx_scale_rule not in (ScaleRule.FLOOR, ScaleRule.EVEN):  # floor: the default
        raise UsageError(
            f"{flag} quantizes with the even scale rule vLLM uses: drop --dmx-scale-rule "
            f"{args.dmx_scale_rule}")
    if args.dmx_tie == TiePreset.QKV:
        raise UsageError(f"{flag} ties q/k/v and gate/up, as vLLM fuses them: drop --dmx-tie qkv")
    if method.name == "uniform" and args.dmx_format is not None:
        fmt = element_format(args.dmx_format).name
        if fmt not in deployable_formats(fmt, args.dmx_weights_only):
            raise UsageError(
                f"{flag}: --dmx-format {args.dmx_format} is not a format vLLM serves from a "
                f"Quark checkpoint; use e2m1, e2m3 or e3m2")
    return ScaleRule.EVEN.value, TiePreset.QKV_GATEUP.value


def check_deployment(plan) -> None:
    """What the deployment flags need: a quantized model, their extras, Quark's formats."""
    args = plan.args
    if (args.dmx_save_pretrained or args.dmx_export_qonnx or
            args.dmx_export_quark) and not plan.method.quantizes:
        raise UsageError(
            "--dmx-save-pretrained / --dmx-export-qonnx / --dmx-export-quark need a quantized "
            f"model, not --dmx-method {plan.method.name}")
    if args.dmx_export_quark:
        _check_quark_export(plan)
    if args.dmx_export_qonnx:
        try:
            import onnx  # noqa: F401
            import onnxoptimizer  # noqa: F401
            import qonnx  # noqa: F401
        except ImportError as err:
            raise UsageError(
                f"--dmx-export-qonnx needs the export extra ({err.name} is missing): "
                f"pip install 'brevitas-dmx[export]'") from None


def _check_quark_export(plan) -> None:
    """What ``--dmx-export-quark`` would refuse at the end of the run, refused before the model
    loads: a scale rule other than even, fused layers free to split, formats without an exact
    Quark spelling."""
    args, flag = plan.args, "--dmx-export-quark"
    try:
        import ml_dtypes  # noqa: F401
        import safetensors  # noqa: F401
    except ImportError as err:
        raise UsageError(
            f"{flag} needs the quark extra ({err.name} is missing): "
            f"pip install 'brevitas-dmx[quark]'") from None
    if plan.scale_rule != "even":
        raise UsageError(
            f"{flag} needs --dmx-scale-rule even (got {plan.scale_rule}): Quark and vLLM "
            f"quantize inputs with the even rule, so a {plan.scale_rule} model would not be "
            f"served as it was evaluated")
    if plan.method.searches and plan.tie != "qkv-gateup":
        raise UsageError(
            f"{flag} needs the layers a runtime fuses (q/k/v, gate/up) in one format: add "
            f"--dmx-tie qkv-gateup")
    if plan.file_map is not None:
        try:  # a map that splits q/k/v or gate/up, before the run rather than after it
            check_fused_layers(
                {
                    n: {
                        "weight": e.get("weight"), "input": e.get("input")
                    } for n, e in check_format_map(plan.file_map).items()
                })
        except ValueError as err:
            raise UsageError(
                f"{flag} with --dmx-format-map {args.dmx_format_map!r}: {err}") from None
    weights, inputs = plan.method.quark_formats(plan)
    if args.dmx_weights_only:
        inputs = set()
    bad = sorted(weights - QUARK_WEIGHT_FORMATS) + [
        f"{name} inputs" for name in sorted(inputs - QUARK_INPUT_FORMATS)
    ]
    if bad:
        raise UsageError(
            f"{flag}: Quark checkpoints hold MXFP4 and both MXFP6 as weights and inputs and "
            f"MXFP8 E4M3 as weights only; this run can give {', '.join(bad)}. Use --dmx-ladder "
            f"mxfp6-mxfp4, --dmx-weights-only, or other formats; --dmx-deploy vllm-quark "
            f"searches only formats a checkpoint carries and vLLM loads")
