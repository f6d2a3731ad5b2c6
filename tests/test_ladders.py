# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Any chain of MX formats as a ladder: its path, its offsets and its exactness at each format."""

import itertools
import json
import shutil

import brevitas.nn as qnn
from conftest import mx_stress_tensor
from conftest import run_formats_used
from conftest import tiny_run_argv
import pytest
import torch

from brevitas_dmx import llm
from brevitas_dmx.core.offset import discrete_offset
from brevitas_dmx.core.offset import DMXOffset
from brevitas_dmx.core.offset import relaxation_gap
from brevitas_dmx.core.offset import tempered_offset
from brevitas_dmx.formats import DEFAULT_CHAIN
from brevitas_dmx.formats import FORMATS
from brevitas_dmx.formats import ladder
from brevitas_dmx.formats import ladder_for_target
from brevitas_dmx.formats import LADDERS
from brevitas_dmx.model import rounding_for_ladder
from brevitas_dmx.proxy import dmx_quant_of
from brevitas_dmx.quant import fixed_mx_quantizer
from brevitas_dmx.quant import ladder_quantizers
from brevitas_dmx.solver.projection import UNITS_FILE


def _growing_chains():
    """Every chain of two or more element formats with one format per width, lowest first."""
    by_bits = {}
    for fmt in FORMATS.values():
        by_bits.setdefault(fmt.bits, []).append(fmt.name)
    widths = sorted(by_bits)
    chains = []
    for size in range(2, len(widths) + 1):
        for levels in itertools.combinations(widths, size):
            chains += [",".join(c) for c in itertools.product(*(by_bits[b] for b in levels))]
    return chains


CHAINS = _growing_chains()
KNOTS = [(chain, i) for chain in CHAINS for i in range(len(chain.split(",")))]


def test_every_growing_chain_of_the_five_formats_is_a_ladder():
    assert len(CHAINS) == 12
    for chain in CHAINS:
        assert [f.name for f in ladder(chain).formats] == chain.split(",")


@pytest.mark.parametrize("chain", CHAINS)
def test_path_is_exact_at_every_format_of_the_chain(chain):
    path = ladder(chain)
    for beta, fmt in zip(path.knots, path.formats):
        e, m = path.widths(torch.tensor(float(beta)))
        assert (e.item(), m.item()) == (fmt.exponent_bits, fmt.mantissa_bits)
        assert path.widths(float(beta)) == (fmt.exponent_bits, fmt.mantissa_bits)


@pytest.mark.parametrize("chain", CHAINS)
def test_bits_grow_continuously_along_the_path(chain):
    path = ladder(chain)
    betas = torch.linspace(0, path.span, 401)
    bits = path.bits(betas)
    steps = bits.diff()
    assert bool((steps > 0).all())
    assert steps.max().item() <= 2 * path.span / 400 * 1.001  # at most 2 bits per unit offset


def test_mantissa_grows_first_then_the_exponent():
    path = ladder("e2m1,e2m3,e4m3")
    assert path.knots == (0, 2, 4)
    assert path.widths(1.0) == (2.0, 2.0)
    assert path.widths(3.0) == (3.0, 3.0)


def test_width_gradient_follows_the_segment_of_the_offset():
    path = ladder("e2m1,e2m3,e4m3")
    for start, expected in ((1.0, (0.0, 1.0)), (3.0, (1.0, 0.0))):
        beta = torch.tensor(start, requires_grad=True)
        e, m = path.widths(beta)
        grads = [torch.autograd.grad(w, beta, retain_graph=True)[0].item() for w in (e, m)]
        assert tuple(grads) == expected


def test_chain_of_a_named_ladder_is_that_ladder():
    assert ladder("e2m1,e4m3") is LADDERS["mxfp8-mxfp4"]
    assert ladder("mxfp4, e3m2, mxfp8") is LADDERS["mxfp8-mxfp6-mxfp4"]


@pytest.mark.parametrize(
    "chain, message",
    [
        ("e2m1,e9m9", "Unknown MX element format 'e9m9'"),
        ("e2m3,e3m2", "does not grow in bits"),
        ("e4m3,e2m1", "does not grow in bits"),
        ("e2m1", "chain of two or more"),
        ("mxfp16", "chain of two or more"),
    ])
def test_bad_chain_is_refused_with_what_to_change(chain, message):
    with pytest.raises(ValueError, match=message):
        ladder(chain)


def test_tempered_offset_of_a_chain_ends_on_its_formats():
    path = ladder("e2m1,e2m3,e4m3")
    raw = torch.tensor([-1.0, 0.9, 1.1, 2.0, 2.9, 3.1, 5.0])
    hot = tempered_offset(raw, torch.tensor(1e4), path, 20.0)
    assert torch.equal(
        discrete_offset(raw, path), torch.tensor([0.0, 0.0, 2.0, 2.0, 2.0, 4.0, 4.0]))
    assert torch.allclose(hot[[0, 1, 2, 4, 5, 6]], discrete_offset(raw, path)[[0, 1, 2, 4, 5, 6]])
    assert hot[3].item() == pytest.approx(2.0)


def test_tempered_offset_of_a_chain_is_increasing_and_differentiable():
    path = ladder("e2m1,e2m3,e4m3")
    raw = torch.linspace(-0.5, 4.5, 101, requires_grad=True)
    beta = tempered_offset(raw, torch.tensor(0.4), path, 20.0)
    assert bool((beta.diff() > 0).all())
    (grad,) = torch.autograd.grad(beta.sum(), raw)
    assert bool((grad > 0).all())


def test_relaxation_gap_is_half_a_segment_at_its_middle():
    path = ladder("e2m1,e2m3,e4m3")
    for temperature in (0.4, 20.0, 1e4):
        gap = relaxation_gap(torch.tensor([1.0, 3.0]), torch.tensor(temperature), path, 20.0)
        assert torch.allclose(gap, torch.tensor([1.0, 1.0]))


def test_relaxation_gap_bounds_the_slope_of_the_tempered_offset():
    path = ladder("e2m1,e2m3,e4m3")
    raw = torch.linspace(-0.5, 4.5, 101, requires_grad=True)
    for temperature in (0.4, 3.0, 20.0):
        t = torch.tensor(temperature)
        (slope,) = torch.autograd.grad(tempered_offset(raw, t, path, 20.0).sum(), raw)
        gap = relaxation_gap(raw.detach(), t, path, 20.0)
        # each segment's slope is c * T * s * (1 - s) <= c * T * gap / L, L = 2 here
        assert bool((slope <= 2 * 20.0 * temperature * gap / 2 * (1 + 1e-5)).all())


def test_an_offset_settles_only_once_its_sigmoid_has_saturated():
    offset = DMXOffset("e2m1,e2m3,e4m3", init=0.4)
    offset.temperature.fill_(0.4)
    assert not offset.settled(1e-6)
    offset.temperature.fill_(1e3)
    assert offset.settled(1e-6)
    offset.rounding = "ste"
    assert not offset.settled(1e-6)


def test_offset_assignment_accepts_only_the_chain_formats():
    offset = DMXOffset("e2m1,e2m3,e4m3")
    offset.assign(2.0)
    assert offset.eval()().item() == 2.0
    with pytest.raises(ValueError, match="not a format of ladder"):
        offset.assign(1.0)


@pytest.mark.parametrize("chain, index", KNOTS)
def test_learnable_layer_is_bit_exact_with_brevitas_at_each_format(chain, index):
    path = ladder(chain)
    fmt = path.formats[index]
    weight_quant, input_quant = ladder_quantizers(chain)
    torch.manual_seed(0)
    learnable = qnn.QuantLinear(
        256, 48, bias=True, weight_quant=weight_quant, input_quant=input_quant)
    fixed = qnn.QuantLinear(
        256,
        48,
        bias=True,
        weight_quant=fixed_mx_quantizer(fmt.name, "weight"),
        input_quant=fixed_mx_quantizer(fmt.name, "act"))
    fixed.load_state_dict(learnable.state_dict(), strict=False)
    dmx_quant_of(learnable.weight_quant).offset.assign(float(path.knots[index]))
    x = mx_stress_tensor(rows=24, seed=1).reshape(2, 12, 256)
    with torch.no_grad():
        assert torch.equal(learnable.eval()(x), fixed.eval()(x))


def test_weight_and_input_of_a_chain_layer_share_one_offset():
    weight_quant, input_quant = ladder_quantizers("e2m3,e5m2")
    layer = qnn.QuantLinear(64, 32, bias=False, weight_quant=weight_quant, input_quant=input_quant)
    assert dmx_quant_of(layer.weight_quant).offset is dmx_quant_of(layer.input_quant).offset


def test_unknown_chain_is_refused_before_the_model_loads(tiny_folder, capsys, no_model_loading):
    argv = ["--model", tiny_folder, "--dmx", "--dmx-target-bits", "5", "--dmx-ladder", "e2m1,e3m3"]
    assert llm.main(argv) == 2
    err = capsys.readouterr().err
    assert "--dmx-ladder" in err and "e3m3" in err


def test_chain_that_does_not_grow_is_refused_naming_the_flag(tiny_folder, capsys, no_model_loading):
    argv = ["--model", tiny_folder, "--dmx", "--dmx-target-bits", "7", "--dmx-ladder", "e4m3,e5m2"]
    assert llm.main(argv) == 2
    assert "--dmx-ladder: Ladder 'e4m3,e5m2' does not grow in bits" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["dmx", "fisher"])
def test_three_format_chain_run_ends_on_its_formats_within_budget(
        method, tiny_folder, text_file, tmp_path):
    argv = tiny_run_argv(
        tiny_folder,
        text_file,
        tmp_path,
        "--dmx-method",
        method,
        "--dmx-ladder",
        "e2m1,e2m3,e4m3",
        "--dmx-target-bits",
        "5.5",
        "--dmx-steps",
        "6",
        "--dmx-batch-size",
        "4",
        "--dmx-sensitivity-samples",
        "2",
        "--dmx-skip-baselines")
    assert llm.main(argv) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    used = run_formats_used(tmp_path)
    assert used <= {"e2m1", "e2m3", "e4m3"} and len(used) >= 2
    assert metrics["ladder"] == "e2m1,e2m3,e4m3"
    assert metrics["avg_bits"] <= 5.5 + 1e-9


@pytest.mark.parametrize(
    "target, scale, expected",
    [
        (4.5, 0.25, ("e2m1", "e2m3")),
        (6.25, 0.25, ("e2m1", "e2m3")),  # uniform E2M3 meets it
        (6.3, 0.25, ("e2m3", "e4m3")),
        (8.25, 0.25, ("e2m3", "e4m3")),
        (6.0, 0.0, ("e2m1", "e2m3")),
        (6.1, 0.0, ("e2m3", "e4m3")),
    ])
def test_auto_ladder_is_the_default_chain_segment_around_the_target(target, scale, expected):
    chosen = ladder_for_target(target, scale)
    assert tuple(f.name for f in chosen.formats) == expected


def test_auto_ladder_without_a_target_is_the_whole_chain():
    assert ladder_for_target(None) == ladder(DEFAULT_CHAIN)


def _auto_run(model, data, out, target, *extra):
    return tiny_run_argv(
        model,
        data,
        out,
        "--dmx-target-bits",
        target,
        "--dmx-steps",
        "2",
        "--dmx-batch-size",
        "4",
        "--dmx-skip-baselines",
        *extra)


def test_default_run_trains_on_the_segment_around_its_target(tiny_folder, text_file, tmp_path):
    assert llm.main(_auto_run(tiny_folder, text_file, tmp_path, "5.5")) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["ladder"] == "mxfp6-mxfp4" and metrics["ladder_auto"] is True
    assert metrics["rounding"] == "anneal"
    assert run_formats_used(tmp_path) <= {"e2m1", "e2m3"}


def test_default_run_above_mxfp6_samples_the_real_formats(tiny_folder, text_file, tmp_path):
    assert llm.main(_auto_run(tiny_folder, text_file, tmp_path, "7")) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (metrics["ladder"], metrics["rounding"]) == ("e2m3,e4m3", "sample")
    assert run_formats_used(tmp_path) <= {"e2m3", "e4m3"}
    assert metrics["avg_bits"] <= 7 + 1e-9


@pytest.mark.parametrize(
    "chain, rounding",
    [
        ("e2m3,e4m3", "sample"),  # only the exponent grows
        ("e3m2,e5m2", "sample"),
        ("e2m1,e2m3", "anneal"),
        ("e2m1,e4m3", "anneal"),
        ("e2m1,e2m3,e4m3", "anneal"),
    ])
def test_auto_rounding_samples_where_only_the_exponent_grows(chain, rounding):
    assert rounding_for_ladder(chain) == rounding


@pytest.fixture(scope="module")
def auto_source(tiny_folder, text_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("auto-source")
    assert llm.main(_auto_run(tiny_folder, text_file, out, "5")) == 0
    return out


def test_auto_retarget_keeps_the_ladder_the_offsets_learned_on(
        auto_source, tiny_folder, text_file, tmp_path, capsys, no_model_loading):
    # 7 bits alone would pick e2m3,e4m3; the offsets learned at 5 bits are on e2m1,e2m3
    argv = _auto_run(tiny_folder, text_file, tmp_path, "7", "--dmx-retarget-from", str(auto_source))
    assert llm.main(argv) == 2
    assert "--dmx-ladder mxfp6-mxfp4 can reach: 4.25 to 6.25" in capsys.readouterr().err


def test_retarget_on_another_ladder_is_refused_naming_both(
        auto_source, tiny_folder, text_file, tmp_path, capsys, no_model_loading):
    argv = _auto_run(
        tiny_folder,
        text_file,
        tmp_path,
        "5",
        "--dmx-retarget-from",
        str(auto_source),
        "--dmx-ladder",
        "e2m1,e4m3")
    assert llm.main(argv) == 2
    err = capsys.readouterr().err
    assert "--dmx-ladder: mxfp8-mxfp4, but the offsets" in err and "mxfp6-mxfp4" in err


def test_retarget_keeps_lowered_layers_at_the_start_their_run_recorded(
        auto_source, tiny_folder, text_file, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(auto_source, source)
    units = json.loads((source / UNITS_FILE).read_text())
    lowered = [u for u in units["units"] if u["raw_offset"] < u["start_offset"]]
    assert len(lowered) >= 2
    lowered[0]["start_offset"] = 2.0  # as if a warm start had put it on E2M3
    (source / UNITS_FILE).write_text(json.dumps(units))
    out = tmp_path / "run"
    assert llm.main(
        _auto_run(tiny_folder, text_file, out, "6.25", "--dmx-retarget-from", str(source))) == 0
    fmap = json.loads((out / "format_map.json").read_text())
    weight_format = [fmap[u["members"][0]["layer"]]["weight"] for u in lowered]
    assert weight_format == ["e2m3"] + ["e2m1"] * (len(lowered) - 1)
    assert json.loads((out / "metrics.json").read_text())["lowered_offsets"] == len(lowered)


def test_auto_refuses_a_target_off_its_chain_with_the_chain_range(
        tiny_folder, capsys, no_model_loading):
    assert llm.main(["--model", tiny_folder, "--dmx", "--dmx-target-bits", "9"]) == 2
    assert "--dmx-ladder auto (e2m1,e2m3,e4m3) can reach: 4.25 to 8.25" in capsys.readouterr().err
