# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""AMD Quark's "even" scale rule and the Quark checkpoint export (--dmx-export-quark)."""

import json
import os

import brevitas.nn as qnn
from conftest import mx_stress_tensor
from conftest import OCP_FORMATS
from conftest import quantize_tiny_llama
from conftest import tiny_run_argv
import numpy as np
import pytest
import torch

from brevitas_dmx import llm
import brevitas_dmx as dmx
from brevitas_dmx.export import export_quark
from brevitas_dmx.export import pack_codes
from brevitas_dmx.export.checkpoint import _decode
from brevitas_dmx.export.checkpoint import _unpack_bits
from brevitas_dmx.export.qonnx_ops import mx_block_scale
from brevitas_dmx.formats import element_format
from brevitas_dmx.functional import mx_fake_quantize
from brevitas_dmx.functional import mx_quantize_blocks
from brevitas_dmx.quant import DMXFloatAct
from brevitas_dmx.quant import DMXFloatWeight
from brevitas_dmx.quant.fixed import fixed_mx_quantizer

QUARK_DTYPES = {"e2m1": "fp4", "e2m3": "fp6_e2m3", "e3m2": "fp6_e3m2", "e4m3": "fp8_e4m3"}

# Block maxima on both sides of the even rule's threshold 2 - 2**-(m+1) (times 2**3), with the
# scale each rule gives: floor 2**(3 - emax) for all; even one power higher at the threshold.
HAND_BLOCKS = [
    # (format, block maximum, floor scale, even scale)
    ("e2m1", 1.75 * 8, 2.0, 4.0),  # E2M1: threshold 1.75, emax 2
    ("e2m1", 1.6875 * 8, 2.0, 2.0),
    ("e2m3", 1.9375 * 8, 2.0, 4.0),  # E2M3: threshold 1.9375, emax 2
    ("e2m3", 1.875 * 8, 2.0, 2.0),
    ("e3m2", 1.875 * 8, 0.5, 1.0),  # E3M2: threshold 1.875, emax 4
    ("e3m2", 1.8125 * 8, 0.5, 0.5),
    ("e4m3", 1.9375 * 8, 2.0**-5, 2.0**-4),  # E4M3: threshold 1.9375, emax 8
    ("e4m3", 1.875 * 8, 2.0**-5, 2.0**-5),
]


@pytest.mark.parametrize("fmt,amax,floor_scale,even_scale", HAND_BLOCKS)
def test_even_scale_rounds_the_block_maximum_to_the_mantissa_width(
        fmt, amax, floor_scale, even_scale):
    e, m, _, _ = OCP_FORMATS[fmt]
    block = torch.full((1, 32), 0.25)
    block[0, 5] = -amax
    scales = {}
    for rule in ("floor", "even"):
        _, scale = mx_quantize_blocks(block, torch.tensor(float(e)), torch.tensor(float(m)), rule)
        scales[rule] = scale.item()
    assert scales == {"floor": floor_scale, "even": even_scale}
    # The numpy reference of the QONNX node, an independent implementation, agrees.
    emax = {"e2m1": 2, "e2m3": 2, "e3m2": 4, "e4m3": 8}[fmt]
    numpy_scale = mx_block_scale(block.numpy(), emax, 0.0, "even", m)
    assert numpy_scale.item() == even_scale


def test_even_rounds_a_maximum_at_the_threshold_up_where_floor_saturates():
    # E2M1 block maximum 1.75: floor keeps scale 1/4 and saturates 7 to 6 (1.5); even takes
    # scale 1/2 and rounds 3.5 to 4 (2.0), Quark's "x in [1.75 * 2**n, 2**(n+1)] -> 2**(n+1)".
    x = torch.zeros(1, 32)
    x[0, 0] = 1.75
    assert mx_fake_quantize(x, 2, 1, scale_rule="floor")[0, 0].item() == 1.5
    assert mx_fake_quantize(x, 2, 1, scale_rule="even")[0, 0].item() == 2.0


@pytest.mark.parametrize("fmt", ["e2m1", "e2m3", "e3m2", "e4m3"])
def test_fixed_even_quantizer_matches_the_functional_core(fmt):
    e, m, _, _ = OCP_FORMATS[fmt]
    x = mx_stress_tensor()
    layer = qnn.QuantLinear(
        x.shape[1], x.shape[0], bias=False, weight_quant=fixed_mx_quantizer(fmt, "weight", "even"))
    layer.weight.data.copy_(x)
    assert torch.equal(layer.quant_weight().value, mx_fake_quantize(x, e, m, scale_rule="even"))


def _quark_reference(x, fmt):
    from quark.torch.kernel.hw_emulation.hw_emulation_interface import fake_quantize_mx
    return fake_quantize_mx(
        x,
        axis=-1,
        block_size=32,
        scale_calculation_mode="even",
        mx_element_dtype=QUARK_DTYPES[fmt])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fmt", ["e2m1", "e2m3", "e3m2", "e4m3"])
def test_even_rule_is_bit_exact_with_amd_quark(fmt, dtype):
    pytest.importorskip("quark")
    e, m, _, _ = OCP_FORMATS[fmt]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(
        64, 256, generator=g) * torch.exp2(torch.randint(-12, 12, (64, 1), generator=g).float())
    x = x.to(dtype)
    expected = _quark_reference(x, fmt)
    assert torch.equal(mx_fake_quantize(x, e, m, scale_rule="even"), expected)
    layer = qnn.QuantLinear(
        256, 64, bias=False, weight_quant=fixed_mx_quantizer(fmt, "weight", "even")).to(dtype)
    layer.weight.data.copy_(x)
    assert torch.equal(layer.quant_weight().value, expected)
    # The rule matters on these tensors: floor gives other values.
    assert not torch.equal(mx_fake_quantize(x, e, m, scale_rule="floor"), expected)


@pytest.mark.parametrize("bits", [4, 6, 8])
def test_packed_codes_unpack_to_the_codes(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 2**bits, size=(6, 64), dtype=np.uint8)
    packed = pack_codes(codes, bits)
    assert packed.shape == (6, 64 * bits // 8)
    assert np.array_equal(_unpack_bits(packed.reshape(-1), bits, codes.size), codes.reshape(-1))


def test_packed_layout_is_quarks():
    # MXFP4: two codes a byte, the first in the low nibble. MXFP6: four codes in one 24-bit
    # little-endian word, the first in its low six bits.
    assert pack_codes(np.array([[0x1, 0x2]], np.uint8), 4).tolist() == [[0x21]]
    v = np.array([[0x3F, 0x01, 0x2A, 0x15]], np.uint8)
    word = int(v[0, 0]) | int(v[0, 1]) << 6 | int(v[0, 2]) << 12 | int(v[0, 3]) << 18
    assert pack_codes(v, 6).tolist() == [[word & 0xFF, word >> 8 & 0xFF, word >> 16]]


def _even_llama(formats):
    model = quantize_tiny_llama(
        DMXFloatWeight.let(dmx_scale_rule="even"), DMXFloatAct.let(dmx_scale_rule="even"))
    names = [name for name, _ in dmx.dmx_layers(model)]
    dmx.apply_format_map(model, {n: formats(n) for n in names})
    model.eval()
    return dmx.finalize(model)


def test_exported_weights_decode_to_the_quantized_weights(tmp_path):
    from safetensors.torch import load_file
    fmts = {"q_proj": "e2m1", "k_proj": "e2m1", "v_proj": "e2m1", "o_proj": "e3m2"}
    model = _even_llama(lambda n: fmts.get(n.rsplit(".", 1)[1], "e2m3"))
    export_quark(model, str(tmp_path))
    tensors = load_file(str(tmp_path / "model.safetensors"))
    for name, module in model.named_modules():
        if not isinstance(module, qnn.QuantLinear):
            continue
        fmt = element_format(dmx.format_map(model)[name]["weight"])
        weight = tensors[f"{name}.weight"].numpy()
        assert weight.dtype == np.uint8 and weight.shape[1] == module.in_features * fmt.bits // 8
        codes = _unpack_bits(weight.reshape(-1), fmt.bits, module.weight.numel())
        values = _decode(codes, fmt).reshape(module.out_features, -1, 32)
        scale = np.exp2(tensors[f"{name}.weight_scale"].numpy().astype(np.float64) - 127)
        decoded = (values * scale[..., None]).reshape(module.weight.shape)
        assert np.array_equal(decoded, module.quant_weight().value.detach().double().numpy())
    assert torch.equal(tensors["lm_head.weight"], model.lm_head.weight)


def test_config_names_each_layers_formats_and_excludes_the_head(tmp_path):
    fmts = {"o_proj": "e3m2", "down_proj": {"weight": "e2m3", "input": "e2m1"}}
    model = _even_llama(lambda n: fmts.get(n.rsplit(".", 1)[1], "e2m1"))
    export_quark(model, str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "quark" and config["exclude"] == ["lm_head"]
    assert config["global_quant_config"]["weight"]["dtype"] == "fp4"
    layers = config["layer_quant_config"]
    assert set(layers) == {
        f"model.layers.{i}.{leaf}" for i in (0, 1)
        for leaf in ("self_attn.o_proj", "mlp.down_proj")
    }
    down = layers["model.layers.1.mlp.down_proj"]
    assert (down["weight"]["dtype"], down["input_tensors"]["dtype"]) == ("fp6_e2m3", "fp4")
    assert down["input_tensors"]["is_dynamic"] and not down["weight"]["is_dynamic"]
    assert down["weight"]["scale_calculation_mode"] == "even"


def test_a_map_that_splits_fused_layers_is_refused(tmp_path):
    model = _even_llama(lambda n: "e3m2" if n.endswith("k_proj") else "e2m1")
    with pytest.raises(ValueError,
                       match=r"q_proj \(e2m1/e2m1\).*k_proj \(e3m2/e3m2\)"
                       r".*--dmx-tie qkv-gateup"):
        export_quark(model, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


def test_a_floor_model_is_refused_with_the_flag_to_use(tmp_path):
    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct)
    dmx.apply_format_map(model, {n: "e2m1" for n, _ in dmx.dmx_layers(model)})
    dmx.finalize(model.eval())
    with pytest.raises(ValueError, match="floor rule.*--dmx-scale-rule even"):
        export_quark(model, str(tmp_path))


def test_mxfp8_inputs_are_refused(tmp_path):
    model = _even_llama(lambda n: "e4m3" if ".mlp." in n else "e2m1")
    with pytest.raises(ValueError, match="gate_proj: e4m3 inputs"):
        export_quark(model, str(tmp_path))


# A mixed map: MXFP4, MXFP6 E2M3 and MXFP6 E3M2 on different layers, weights and inputs, one
# MXFP8 weight; q/k/v and gate/up of each block in one format.
MIXED_MAP = {
    "model.layers.0.self_attn.q_proj": "e2m1",
    "model.layers.0.self_attn.k_proj": "e2m1",
    "model.layers.0.self_attn.v_proj": "e2m1",
    "model.layers.0.self_attn.o_proj": "e3m2",
    "model.layers.0.mlp.gate_proj": "e2m3",
    "model.layers.0.mlp.up_proj": "e2m3",
    "model.layers.0.mlp.down_proj": "e2m1",
    "model.layers.1.self_attn.q_proj": "e3m2",
    "model.layers.1.self_attn.k_proj": "e3m2",
    "model.layers.1.self_attn.v_proj": "e3m2",
    "model.layers.1.self_attn.o_proj": "e2m3",
    "model.layers.1.mlp.gate_proj": "e2m1",
    "model.layers.1.mlp.up_proj": "e2m1",
    "model.layers.1.mlp.down_proj": {
        "weight": "e4m3", "input": "e3m2"
    },
}


@pytest.fixture(scope="module")
def exported(tiny_folder, text_file, tmp_path_factory):
    """A --dmx-format-map run that writes both the tool's checkpoint and the Quark one."""
    root = tmp_path_factory.mktemp("quark")
    path = root / "map.json"
    path.write_text(json.dumps(MIXED_MAP))
    argv = tiny_run_argv(
        tiny_folder,
        text_file,
        root / "run",
        "--dmx-scale-rule",
        "even",
        "--dmx-tie",
        "qkv-gateup",
        "--dmx-format-map",
        str(path),
        "--dmx-save-pretrained",
        str(root / "checkpoint"),
        "--dmx-export-quark",
        str(root / "quark"))
    with pytest.warns(UserWarning, match="MXFP8 weights"):
        assert llm.main(argv) == 0
    return root


def test_cli_writes_config_weights_and_tokenizer(exported):
    files = set(os.listdir(exported / "quark"))
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files


def test_quark_checkpoint_logits_equal_the_finalized_model(exported):
    pytest.importorskip("quark")
    from transformers import AutoModelForCausalLM
    reference = dmx.load_pretrained(str(exported / "checkpoint"))
    loaded = AutoModelForCausalLM.from_pretrained(str(exported / "quark"), dtype=torch.float32)
    assert type(loaded.model.layers[0].self_attn.q_proj).__name__ == "QParamsLinear"
    ids = torch.randint(0, reference.config.vocab_size, (2, 24), generator=torch.Generator())
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
        got = loaded(input_ids=ids).logits
    assert torch.equal(got, expected)


def test_export_quark_flag_needs_the_even_rule(
        tiny_folder, text_file, tmp_path, capsys, no_model_loading):
    argv = tiny_run_argv(
        tiny_folder,
        text_file,
        tmp_path,
        "--dmx-method",
        "uniform",
        "--dmx-format",
        "e2m1",
        "--dmx-export-quark",
        str(tmp_path / "q"))
    assert llm.main(argv) == 2
    assert "--dmx-export-quark needs --dmx-scale-rule even" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--dmx-target-bits", "5"], "add --dmx-tie qkv-gateup"),
        (
            ["--dmx-target-bits", "5", "--dmx-tie", "qkv-gateup", "--dmx-ladder", "e2m1,e2m3,e4m3"],
            "this run can give e4m3 inputs. Use --dmx-ladder mxfp6-mxfp4"),
        (["--dmx-method", "uniform", "--dmx-format", "e5m2"], "this run can give e5m2, e5m2"),
    ],
)
def test_export_quark_refuses_what_it_cannot_write_before_loading(
        extra, message, tiny_folder, text_file, tmp_path, capsys, no_model_loading):
    argv = tiny_run_argv(
        tiny_folder,
        text_file,
        tmp_path,
        "--dmx-scale-rule",
        "even",
        "--dmx-export-quark",
        str(tmp_path / "q"),
        *extra)
    assert llm.main(argv) == 2
    assert message in capsys.readouterr().err


def test_export_needs_neither_onnx_nor_quark(tmp_path):
    # Writing the checkpoint needs safetensors only: run it where onnx, qonnx and quark cannot
    # be imported.
    import subprocess
    import sys
    script = (
        "import sys\n"
        "for name in ('onnx', 'qonnx', 'onnxruntime', 'onnxoptimizer', 'quark'):\n"
        "    sys.modules[name] = None\n"
        f"sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        "from conftest import quantize_tiny_llama\n"
        "import brevitas_dmx as dmx\n"
        "from brevitas_dmx.export import export_quark\n"
        "from brevitas_dmx.quant import DMXFloatAct, DMXFloatWeight\n"
        "model = quantize_tiny_llama(DMXFloatWeight.let(dmx_scale_rule='even'),\n"
        "                            DMXFloatAct.let(dmx_scale_rule='even'))\n"
        "dmx.apply_format_map(model, {n: 'e2m1' for n, _ in dmx.dmx_layers(model)})\n"
        f"export_quark(dmx.finalize(model.eval()), {str(tmp_path)!r})\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "model.safetensors").is_file()


@pytest.fixture(scope="module")
def deployed(tiny_folder, text_file, tmp_path_factory):
    """A dMX run at 7 bits under --dmx-deploy vllm-quark, with both checkpoints."""
    root = tmp_path_factory.mktemp("deploy")
    argv = tiny_run_argv(
        tiny_folder,
        text_file,
        root / "run",
        "--dmx-deploy",
        "vllm-quark",
        "--dmx-target-bits",
        "7",
        "--dmx-steps",
        "4",
        "--dmx-batch-size",
        "4",
        "--dmx-save-pretrained",
        str(root / "checkpoint"),
        "--dmx-export-quark",
        str(root / "quark"))
    assert llm.main(argv) == 0
    return root


def test_deploy_target_map_is_in_the_served_set(deployed):
    from brevitas_dmx.export.vllm_quark import deployable_combinations
    fmap = json.loads((deployed / "run" / "format_map.json").read_text())
    assert all((e["weight"], e["input"]) in deployable_combinations() for e in fmap.values())
    assert len({fmap[f"model.layers.0.self_attn.{p}_proj"]["weight"] for p in "qkv"}) == 1


def quark_logits_equal_the_tools(root) -> bool:
    """Whether ``root/quark`` (loaded by transformers + amd-quark) gives the logits of the tool's
    own checkpoint ``root/checkpoint``."""
    from transformers import AutoModelForCausalLM
    reference = dmx.load_pretrained(str(root / "checkpoint"))
    loaded = AutoModelForCausalLM.from_pretrained(str(root / "quark"), dtype=torch.float32)
    ids = torch.randint(0, reference.config.vocab_size, (2, 24), generator=torch.Generator())
    with torch.no_grad():
        return torch.equal(loaded(input_ids=ids).logits, reference(input_ids=ids).logits)


def test_deploy_target_checkpoint_loads_with_the_tools_logits(deployed):
    pytest.importorskip("quark")
    assert quark_logits_equal_the_tools(deployed)


def test_gptq_weights_reach_the_quark_checkpoint(tiny_folder, text_file, tmp_path):
    pytest.importorskip("quark")
    argv = tiny_run_argv(
        tiny_folder,
        text_file,
        tmp_path / "run",
        "--dmx-deploy",
        "vllm-quark",
        "--dmx-target-bits",
        "5",
        "--dmx-steps",
        "4",
        "--gptq",
        "--dmx-save-pretrained",
        str(tmp_path / "checkpoint"),
        "--dmx-export-quark",
        str(tmp_path / "quark"))
    assert llm.main(argv) == 0
    assert quark_logits_equal_the_tools(tmp_path)


def test_deploy_target_refuses_a_ladder_vllm_does_not_load(
        tiny_folder, text_file, tmp_path, capsys, no_model_loading):
    argv = tiny_run_argv(
        tiny_folder,
        text_file,
        tmp_path,
        "--dmx-deploy",
        "vllm-quark",
        "--dmx-target-bits",
        "7",
        "--dmx-ladder",
        "e2m3,e4m3")
    assert llm.main(argv) == 2
    assert "vLLM does not load e4m3" in capsys.readouterr().err


def test_deploy_target_refuses_a_budget_under_its_reach_naming_the_range(
        tiny_folder, text_file, tmp_path, capsys, no_model_loading):
    argv = tiny_run_argv(
        tiny_folder, text_file, tmp_path, "--dmx-deploy", "vllm-quark", "--dmx-target-bits", "4")
    assert llm.main(argv) == 2
    assert "4.25 to 8.25 bits" in capsys.readouterr().err
