# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""benchmarks/peers.py without the peer packages: the torch port of ModelOpt's MX fake
quantization against an independent reference, the budget conversions, map writing and bit
counting, and the error when a peer is missing. The real peer searches run only where the
packages are installed."""

import importlib
import importlib.util
import json
import math
import os
import sys

from conftest import mx_stress_tensor
from conftest import OCP_FORMATS
from conftest import quantize_tiny_llama
from conftest import tiny_llama
import numpy as np
import pytest
import torch

import brevitas_dmx as bd
from brevitas_dmx.model import apply_format_map
from brevitas_dmx.model import check_format_map
from brevitas_dmx.quant import DMXFloatAct
from brevitas_dmx.quant import DMXFloatWeight

ml_dtypes = pytest.importorskip("ml_dtypes")

PEERS_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "peers.py")


@pytest.fixture(scope="module")
def peers():
    spec = importlib.util.spec_from_file_location("peers_benchmark", PEERS_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _grid_from_ml_dtypes(fmt):
    """Every finite non-negative value of the format, by decoding all its codes."""
    dtype = getattr(ml_dtypes, OCP_FORMATS[fmt][2])
    bits = 1 + OCP_FORMATS[fmt][0] + OCP_FORMATS[fmt][1]
    codes = np.arange(2**bits, dtype=np.uint8)
    values = codes.view(dtype).astype(np.float64) if bits == 8 else np.array(
        [float(np.array(c, dtype=np.uint8).view(dtype)) for c in codes])
    return sorted({abs(v) for v in values if np.isfinite(v)})


def _reference_block(block, fmt):
    """ModelOpt's rule, computed independently: the smallest power of two 2^e with
    max|x| / 2^e <= the element maximum (e in [-127, 127]), then each x / 2^e to the nearest
    element value, ties to even, by ml_dtypes."""
    dtype = getattr(ml_dtypes, OCP_FORMATS[fmt][2])
    fmax = OCP_FORMATS[fmt][3]
    amax = max(abs(float(v)) for v in block)
    if amax == 0:
        e = 0
    else:
        e = -127
        while amax / 2.0**e > fmax and e < 127:
            e += 1
    scaled = np.array([float(v) / 2.0**e for v in block], dtype=np.float32)
    return scaled.astype(dtype).astype(np.float64) * 2.0**e


@pytest.mark.parametrize("fmt", ["e2m1", "e2m3", "e3m2"])
def test_element_grid_matches_ml_dtypes(peers, fmt):
    assert peers.element_grid(fmt).tolist() == _grid_from_ml_dtypes(fmt)


def test_e2m1_hand_blocks(peers):
    zeros = [0.0] * 26
    blocks = torch.tensor(
        [
            [6.0, 3.0, 0.75, 1.25, 2.5, 5.0] + zeros,  # scale 1: ties to the even grid neighbour
            [6.01, 2.5, 1.0, 0.0, 0.0, 0.0] + zeros,  # ceil: scale 2 (OCP's floor keeps 1, clips)
            [12.0, -7.0, 2.9, 0.4, 0.0, 0.0] + zeros,  # ratio exactly 2: scale 2
            [0.0] * 32,  # an all-zero block stays zero
        ])
    out = peers.modelopt_mx_quantize(blocks, "e2m1")
    assert out[0, :6].tolist() == [6.0, 3.0, 1.0, 1.0, 2.0, 4.0]
    assert out[1, :4].tolist() == [6.0, 2.0, 1.0, 0.0]
    assert out[2, :4].tolist() == [12.0, -8.0, 3.0, 0.0]
    assert out[3].abs().sum() == 0
    exponents = peers.modelopt_scale_exponent(blocks.abs().amax(1), "e2m1")
    assert exponents.tolist() == [0, 1, 1, 0]


def test_ceil_rule_differs_from_ocp_floor(peers):
    """Where amax / 6 is just above a power of two, ModelOpt takes the next exponent up; OCP's
    floor(log2(amax)) - 2 keeps the lower one."""
    amax = torch.tensor([6.01, 7.9, 6.0, 3.0, 1e-40])
    ceil = peers.modelopt_scale_exponent(amax, "e2m1").tolist()
    floor = [math.floor(math.log2(a)) - 2 for a in amax.tolist()]
    assert ceil == [1, 1, 0, -1, -127]
    assert floor[:4] == [0, 0, 0, -1]


@pytest.mark.parametrize("fmt", ["e2m1", "e2m3", "e3m2", "e4m3"])
def test_port_matches_reference(peers, fmt):
    x = mx_stress_tensor(rows=12, cols=96, seed=3)
    out = peers.modelopt_mx_quantize(x, fmt)
    expected = np.stack(
        [
            np.concatenate(
                [_reference_block(row[i:i + 32].tolist(), fmt)
                 for i in range(0, 96, 32)])
            for row in x
        ])
    np.testing.assert_array_equal(out.double().numpy(), expected)


def test_port_ragged_blocks_dtype_and_gradient(peers):
    x = torch.randn(3, 5, 40, dtype=torch.bfloat16, requires_grad=True)
    out = peers._ModelOptMXFakeQuant.apply(x, "e2m1", 32)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    tail = x.detach().float()[..., 32:]
    np.testing.assert_array_equal(
        out.detach().float()[..., 32:].numpy(),
        peers.modelopt_mx_quantize(tail, "e2m1").numpy())  # the last 8 are a block of their own
    out.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # straight through


def test_budget_conversion(peers):
    assert peers.modelopt_budget(5.0) == 4.75
    assert peers.modelopt_budget(8.25) == 8.0
    assert peers.autoround_budget(5.5) == 5.5
    assert peers.autoround_budget(5.5, counts_scales=False) == 5.25


def test_map_bits_and_writing(peers, tmp_path):
    model = tiny_llama()
    layers = peers.quantized_linears(model)
    assert "lm_head" not in layers and len(layers) == 14
    shapes = peers.layer_shapes(model)
    assert all(s.weight.device.type == "meta" for s in shapes.values())
    low = {name: "e2m1" for name in layers}
    high = {name: "e4m3" for name in layers}
    assert peers.map_bits(shapes, low) == 4.25
    assert peers.map_bits(shapes, high) == 8.25
    assert peers.map_bits(shapes, high, with_scales=False) == 8.0
    mixed = dict(low)
    mlp = [n for n in layers if ".mlp." in n]
    mixed.update({n: "e4m3" for n in mlp})
    numel = {n: m.weight.numel() for n, m in layers.items()}
    expected = sum(numel[n] * (8.25 if n in mlp else 4.25) for n in layers) / sum(numel.values())
    assert peers.map_bits(shapes, mixed) == pytest.approx(expected, rel=1e-12)
    assert peers.format_counts(mixed) == {"e2m1": 8, "e4m3": 6}
    with pytest.raises(ValueError, match="missing"):
        peers.map_bits(shapes, {n: f for n, f in mixed.items() if n not in mlp})

    path = tmp_path / "maps" / "peer-5.json"
    peers.write_map(str(path), mixed)
    loaded = json.loads(path.read_text())
    assert loaded == mixed and check_format_map(loaded)
    with pytest.raises(ValueError):
        peers.write_map(str(tmp_path / "bad.json"), {"model.layers.0.mlp.up_proj": "e9m9"})

    # The package's own count of the same map, applied to the quantized model, agrees.
    quantized = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct)
    apply_format_map(quantized, loaded)
    ours = bd.average_bits(quantized, "memory", include_scale_bits=True, discrete=True)
    assert ours.item() == pytest.approx(expected, rel=1e-6)


def test_ragged_layer_counts_one_scale_per_partial_block(peers):
    layer = torch.nn.Linear(40, 3, bias=False)
    assert peers.layer_memory_bits(layer, "e2m1") == 4 * 120 + 8 * 3 * 2


def test_reading_the_peers_choices(peers):
    """The formats in ModelOpt's replayable config and in auto-round's layer config."""
    config = {
        "quant_cfg":
            [
                {
                    "quantizer_name": "*", "enable": False
                },
                {
                    "quantizer_name": "m.a.weight_quantizer",
                    "enable": True,
                    "cfg": {
                        "num_bits": (2, 1)
                    }
                },
                {
                    "quantizer_name": "m.a.input_quantizer",
                    "enable": True,
                    "cfg": {
                        "num_bits": (2, 1)
                    }
                },
                {
                    "quantizer_name": "m.b.weight_quantizer",
                    "enable": True,
                    "cfg": {
                        "num_bits": (4, 3)
                    }
                },
                {
                    "quantizer_name": "m.c.weight_quantizer", "enable": False
                },
            ]
    }
    assert peers._modelopt_map(config, ["m.a", "m.b", "m.c", "m.d"]) == {
        "m.a": "e2m1", "m.b": "e4m3", "m.c": None, "m.d": None
    }
    assert peers._modelopt_constraints(4.75)["effective_bits"] == 4.75
    assert peers._autoround_format({"data_type": "mx_fp", "bits": 4}) == "e2m1"
    assert peers._autoround_format({"data_type": "mx_fp", "bits": 6}) == "e2m3"
    assert peers._autoround_format({"data_type": "mx_fp", "bits": 8}) == "e4m3"
    with pytest.raises(ValueError, match="no MX format"):
        peers._autoround_format({"data_type": "int", "bits": 4})


def test_missing_peer_package(peers, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "auto_round", None)
    with pytest.raises(peers.PeerMissing, match=r"pip install brevitas-dmx\[peers\]"):
        peers.check_peers(["autoround"])
    # Fails before any data or model is read.
    code = peers.main(
        [
            "--model",
            str(tmp_path / "no-such-model"),
            "--dataset",
            str(tmp_path / "none.txt"),
            "--peers",
            "autoround",
            "--targets",
            "5",
            "--output",
            str(tmp_path / "out")
        ])
    assert code == 2
    assert "pip install brevitas-dmx[peers]" in capsys.readouterr().err


def test_formats_a_peer_cannot_search_fail_first(peers, capsys, tmp_path):
    code = peers.main(
        [
            "--dataset",
            str(tmp_path / "none.txt"),
            "--peers",
            "autoround",
            "--formats",
            "e2m1,e3m2",
            "--targets",
            "5",
            "--output",
            str(tmp_path)
        ])
    assert code == 2
    assert "autoround has no MX configuration for e3m2" in capsys.readouterr().err


def test_help_describes_peers_and_bits(peers):
    text = peers.build_parser().format_help()
    for words in ("modelopt-gradient",
                  "modelopt-kl_div",
                  "autoround",
                  "WITHOUT the E8M0",
                  "ceil(log2(amax / max_element))",
                  "counts the 8-bit E8M0 scale"):
        assert words in " ".join(text.split()), words


def test_targets_outside_the_formats_fail(peers, tmp_path, monkeypatch):
    monkeypatch.setattr(peers, "check_peers", lambda *args: None)
    with pytest.raises(SystemExit, match="outside"):
        peers.main(
            [
                "--dataset",
                "x.txt",
                "--peers",
                "autoround",
                "--targets",
                "9",
                "--output",
                str(tmp_path)
            ])


@pytest.mark.parametrize("peer", ["modelopt-gradient", "autoround"])
def test_real_peer_search_on_a_tiny_llama(peers, peer, tiny_folder, text_file, tmp_path):
    module = {"modelopt-gradient": "modelopt.torch.quantization", "autoround": "auto_round"}[peer]
    try:
        importlib.import_module(module)
    except ImportError as err:
        pytest.skip(f"{module} is not installed ({err})")
    out = tmp_path / "out"
    code = peers.main(
        [
            "--model",
            tiny_folder,
            "--dataset",
            text_file,
            "--peers",
            peer,
            "--targets",
            "5",
            "7",
            "--seqlen",
            "32",
            "--nsamples",
            "8",
            "--output",
            str(out)
        ])
    assert code == 0
    rows = [json.loads(line) for line in (out / "peers.jsonl").read_text().splitlines()]
    assert [r["target_bits"] for r in rows] == [5.0, 7.0]
    for row in rows:
        assert row["within_budget"] and row["layers"] == 14
        fmap = json.loads(open(row["map"]).read())
        assert set(fmap.values()) <= {"e2m1", "e4m3"}
        assert row["memory_with_scales"] <= row["target_bits"] + 1e-9
    assert rows[0]["memory_with_scales"] <= rows[1]["memory_with_scales"]
    assert (out / "peers.md").read_text().count(peer) == 2
