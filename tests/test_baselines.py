# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The kl and fisher baselines, the exact knapsack, and the hand-made MLP map."""

from fractions import Fraction
import itertools

from brevitas.graph.quantize import layerwise_quantize
from conftest import dmx_layer_map
from conftest import tiny_llama
import pytest
import torch

import brevitas_dmx as dmx
from brevitas_dmx.baselines import fisher_sensitivity
from brevitas_dmx.baselines import kl_sensitivity
from brevitas_dmx.baselines import mlp_high_map
from brevitas_dmx.baselines import unit_scores
from brevitas_dmx.quant import DMXFloatAct
from brevitas_dmx.quant import DMXFloatWeight
from brevitas_dmx.solver.projection import assign_projection
from brevitas_dmx.solver.projection import budget_problem
from brevitas_dmx.solver.projection import BudgetProblem
from brevitas_dmx.solver.projection import Member
from brevitas_dmx.solver.projection import project_scores
from brevitas_dmx.solver.projection import Unit

HARMFUL = "model.layers.1.self_attn.v_proj"
FORMATS = ["e2m1", "e4m3"]


def make_harmful(model, name=HARMFUL):
    """One outlier per MX block 100x the other weights: in MXFP4 the shared scale follows the
    outlier and every other weight of the block flushes to zero; MXFP8 keeps them."""
    layer = dict(model.named_modules())[name]
    g = torch.Generator().manual_seed(1)
    weight = 0.2 * torch.randn(layer.weight.shape, generator=g)
    weight[:, ::32] = 20.0
    layer.weight.data.copy_(weight)
    return model


def calibration(n=8, seqlen=32, vocab=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, vocab, (seqlen,), generator=g)} for _ in range(n)]


@pytest.fixture(scope="module")
def harmful_model():
    return make_harmful(tiny_llama(0))


@pytest.fixture(scope="module")
def kl_scores(harmful_model):
    return kl_sensitivity(harmful_model, calibration(), FORMATS)


@pytest.fixture(scope="module")
def fisher_scores(harmful_model):
    return fisher_sensitivity(harmful_model, calibration(), FORMATS)


def quantized_problem(model):
    quantized = layerwise_quantize(
        model, dmx_layer_map(DMXFloatWeight, DMXFloatAct), name_blacklist=["lm_head"])
    return quantized, budget_problem(quantized)


def one_upgrade_target(problem):
    """A simple-average budget that affords exactly one MXFP4 -> MXFP8 upgrade."""
    return 4 + 4 / len(problem.units) + 1e-6


def test_kl_scores_the_harmful_layer_highest(kl_scores):
    assert max(kl_scores, key=lambda name: kl_scores[name][0]) == HARMFUL


def test_kl_baseline_promotes_the_harmful_layer(harmful_model, kl_scores, ignore_missing_keys):
    model, problem = quantized_problem(make_harmful(tiny_llama(0)))
    projection = project_scores(
        problem,
        unit_scores(problem, kl_scores),
        one_upgrade_target(problem),
        "simple",
        False,
        solver="greedy")
    assign_projection(model, projection)
    dmx.finalize(model)
    promoted = [name for name, entry in dmx.format_map(model).items() if entry["weight"] == "e4m3"]
    assert promoted == [HARMFUL]


def test_fisher_ranks_the_harmful_layer_first(fisher_scores):
    gain = {name: row[0] - row[1] for name, row in fisher_scores.items()}
    assert max(gain, key=gain.get) == HARMFUL


def test_fisher_knapsack_promotes_the_harmful_layer(fisher_scores, ignore_missing_keys):
    _, problem = quantized_problem(make_harmful(tiny_llama(0)))
    projection = project_scores(
        problem, unit_scores(problem, fisher_scores), one_upgrade_target(problem), "simple", False)
    upgraded = [u.members[0].layer for u, beta in zip(problem.units, projection.betas) if beta]
    assert upgraded == [HARMFUL]


def test_fisher_leaves_parameters_frozen_state_unchanged(harmful_model):
    before = [p.requires_grad for p in harmful_model.parameters()]
    fisher_sensitivity(harmful_model, calibration(2), FORMATS)
    assert [p.requires_grad for p in harmful_model.parameters()] == before
    assert all(p.grad is None for p in harmful_model.parameters())


def test_sensitivities_are_deterministic(harmful_model, kl_scores, fisher_scores):
    assert kl_sensitivity(harmful_model, calibration(), FORMATS) == kl_scores
    assert fisher_sensitivity(harmful_model, calibration(), FORMATS) == fisher_scores


def test_kl_leaves_the_float_model_unchanged(harmful_model):
    ids = calibration(1)[0]["input_ids"][None]
    before = harmful_model(input_ids=ids).logits
    kl_sensitivity(harmful_model, calibration(2), FORMATS)
    assert torch.equal(harmful_model(input_ids=ids).logits, before)


@pytest.mark.parametrize("solver", ["greedy", "knapsack"])
@pytest.mark.parametrize("weighting", ["simple", "size", "memory"])
def test_score_projection_meets_every_budget(fisher_scores, solver, weighting, ignore_missing_keys):
    _, problem = quantized_problem(tiny_llama(0))
    rows = unit_scores(problem, fisher_scores)
    for target in (4.3, 4.9, 5.5, 6.1, 7.7, 8.0):
        projection = project_scores(problem, rows, target, weighting, solver=solver)
        assert projection.average <= target + 1e-12


def random_problem(n, seed):
    g = torch.Generator().manual_seed(seed)
    units = [
        Unit(
            0.0,
            "mxfp8-mxfp4",
            [Member(f"l{i}", "weight", int(32 * torch.randint(1, 40, (1,), generator=g)))])
        for i in range(n)
    ]
    scores = [[float(torch.rand(1, generator=g) * 10), 0.0] for _ in range(n)]
    return BudgetProblem(units, []), scores


@pytest.mark.parametrize("seed", range(4))
def test_knapsack_finds_the_brute_force_optimum(seed):
    problem, scores = random_problem(9, seed)
    sizes = [u.members[0].size for u in problem.units]
    total = sum(sizes)
    target = 5.3
    best = min(
        sum(row[level]
            for row, level in zip(scores, levels))
        for levels in itertools.product((0, 1), repeat=len(sizes))
        if sum(Fraction(s * (4 + 4 * level), total)
               for s, level in zip(sizes, levels)) <= Fraction(53, 10))
    projection = project_scores(problem, scores, target, "size", False)
    found = sum(row[1 if beta else 0] for row, beta in zip(scores, projection.betas))
    assert found == pytest.approx(best)


def test_mlp_high_map_puts_mlp_layers_high():
    names = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj"]
    assert mlp_high_map(names, "e2m1", "e4m3") == {names[0]: "e2m1", names[1]: "e4m3"}
