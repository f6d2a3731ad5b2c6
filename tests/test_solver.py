# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The solver on a tiny random Llama: schedule, penalties, training, projection, resume."""

import os

from conftest import quantize_tiny_llama
import pytest
import torch
from transformers import TrainerCallback

import brevitas_dmx as bd
from brevitas_dmx.core.offset import DMXOffset
from brevitas_dmx.quant import DMXFloatAct
from brevitas_dmx.quant import DMXFloatStaircaseAct
from brevitas_dmx.quant import DMXFloatStaircaseWeight
from brevitas_dmx.quant import DMXFloatWeight
from brevitas_dmx.solver import budget_problem
from brevitas_dmx.solver import DMXTrainer
from brevitas_dmx.solver import HeldBudget
from brevitas_dmx.solver import NonFiniteLossError
from brevitas_dmx.solver import project_model
from brevitas_dmx.solver import retarget
from brevitas_dmx.solver import ScalingPenalty
from brevitas_dmx.solver import TargetAwarePenalty
from brevitas_dmx.solver import temperature_at
from brevitas_dmx.solver import training_arguments
from brevitas_dmx.solver.projection import budget_start_offsets
from brevitas_dmx.solver.projection import BudgetProblem
from brevitas_dmx.solver.projection import init_offsets
from brevitas_dmx.solver.projection import load_problem
from brevitas_dmx.solver.projection import Member
from brevitas_dmx.solver.projection import project
from brevitas_dmx.solver.projection import restore_start_offsets
from brevitas_dmx.solver.projection import save_problem
from brevitas_dmx.solver.projection import Unit


def _token_data(n=48, length=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "input_ids": ids, "labels": ids
        } for ids in torch.randint(0, 96, (n, length), generator=g)
    ]


def _set_offsets(model, values):
    with torch.no_grad():
        for offset, value in zip(bd.dmx_offsets(model), values):
            offset.raw_offset.fill_(float(value))


def _spread_offsets(model, seed=1, high=2.0):
    g = torch.Generator().manual_seed(seed)
    n = len(bd.dmx_offsets(model))
    _set_offsets(model, (torch.rand(n, generator=g) * high).tolist())


def test_temperature_schedule_hits_its_endpoints():
    assert temperature_at(0, 100) == 0.4
    assert temperature_at(59, 100) == 0.4
    assert temperature_at(99, 100) == pytest.approx(20.0)
    ramp = [temperature_at(s, 100) for s in range(60, 100)]
    assert all(b > a for a, b in zip(ramp, ramp[1:]))


def test_target_aware_penalty_is_zero_under_budget():
    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct).train()
    penalty, bits = TargetAwarePenalty(6.0, lam=5.0)(model)
    assert bits.item() < 6.0 and penalty.item() == 0.0


def test_target_aware_penalty_grows_over_budget_and_pulls_bits_down():
    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct).train()
    _set_offsets(model, [1.5] * 14)
    penalty, bits = TargetAwarePenalty(5.0, lam=5.0)(model)
    assert penalty.item() == pytest.approx(5.0 * (bits.item() - 5.0))
    penalty.backward()
    assert all(o.raw_offset.grad.item() > 0 for o in bd.dmx_offsets(model))


def test_scaling_penalty_is_lambda_times_bits():
    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct).train()
    penalty, bits = ScalingPenalty(lam=0.5, weighting="size")(model)
    assert penalty.item() == pytest.approx(0.5 * bits.item())


def test_held_budget_moves_an_over_budget_average_onto_the_target():
    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct).train()
    _set_offsets(model, [1.5] * 14)
    held = HeldBudget(5.0)
    assert held.average(model).item() > 5.5
    assert held.hold(model) > 0
    assert held.average(model).item() == pytest.approx(5.0, abs=1e-4)
    assert held.average(model).item() <= 5.0
    assert all(o.raw_offset.item() < 1.5 for o in bd.dmx_offsets(model))


def test_held_budget_leaves_an_average_under_the_target_alone():
    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct).train()
    _spread_offsets(model, high=1.0)
    before = [o.raw_offset.item() for o in bd.dmx_offsets(model)]
    assert HeldBudget(7.0).hold(model) == 0.0
    assert [o.raw_offset.item() for o in bd.dmx_offsets(model)] == before


def test_held_budget_has_no_penalty():
    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct).train()
    _set_offsets(model, [1.5] * 14)
    penalty, bits = HeldBudget(5.0)(model)
    assert bits.item() > 5.0 and penalty.item() == 0.0


def test_a_held_budget_run_ends_on_the_budget(tmp_path):
    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct)
    _set_offsets(model, [1.5] * 14)
    args = training_arguments(str(tmp_path), steps=6, batch_size=4, lr=1.0, seed=0)
    # no annealing: at one temperature the average is smooth and the hold lands on it
    DMXTrainer(model, args, HeldBudget(5.0), temp_end=0.4, train_dataset=_token_data()).train()
    model.train()
    assert HeldBudget(5.0).average(model).item() == pytest.approx(5.0, abs=1e-3)


def test_the_trainer_calls_the_regularizers_after_step_once_a_step(tmp_path):
    calls = []

    class CountingPenalty(TargetAwarePenalty):

        def after_step(self, model):
            calls.append(len(bd.dmx_offsets(model)))

    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct)
    args = training_arguments(str(tmp_path), steps=3, batch_size=4, lr=1.0, seed=0)
    DMXTrainer(model, args, CountingPenalty(5.0), train_dataset=_token_data()).train()
    assert calls == [14, 14, 14]


def _offsets_after(tmp_path, skip_settled_steps, **kw):
    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct)
    _spread_offsets(model)
    forwards = []
    model.register_forward_hook(lambda *_: forwards.append(1))
    args = training_arguments(str(tmp_path), steps=8, batch_size=4, lr=1.0, seed=0)
    trainer = DMXTrainer(
        model,
        args,
        TargetAwarePenalty(5.0),
        momentum=0.9,
        train_dataset=_token_data(),
        skip_settled_steps=skip_settled_steps,
        **kw)
    trainer.train()
    return [o.raw_offset.item() for o in bd.dmx_offsets(model)], trainer, len(forwards)


def test_settled_steps_skip_the_passes_and_end_where_the_full_run_ends(tmp_path):
    schedule = {"temp_end": 1e4, "temp_delay": 0.5}
    full, _, full_forwards = _offsets_after(tmp_path / "full", False, **schedule)
    skipped, trainer, forwards = _offsets_after(tmp_path / "skip", True, **schedule)
    assert 0 < trainer.settled_steps < 8
    assert forwards == full_forwards - trainer.settled_steps
    assert skipped == pytest.approx(full, abs=1e-5)


def test_a_run_settled_from_its_first_step_logs_no_loss(tmp_path):
    _, trainer, forwards = _offsets_after(tmp_path, True, temp_start=1e4, temp_end=1e4)
    assert (trainer.settled_steps, forwards) == (8, 0)
    steps = [entry for entry in trainer.state.log_history if "settled_steps" in entry]
    assert steps and all("loss" not in entry for entry in steps)


def _train(
        model,
        output_dir,
        steps,
        target=5.0,
        lam=5.0,
        lr=1.0,
        resume=None,
        data=None,
        skip_settled_steps=True,
        **kw):
    args = training_arguments(str(output_dir), steps=steps, batch_size=4, lr=lr, seed=0, **kw)
    trainer = DMXTrainer(
        model,
        args,
        TargetAwarePenalty(target, lam),
        train_dataset=data or _token_data(),
        skip_settled_steps=skip_settled_steps)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_short_run_moves_offsets_and_pulls_an_over_budget_model_down(tmp_path):
    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct)
    _set_offsets(model, [1.2] * 14)  # ~6.7 bits in training, 8 discrete; target 5
    before = [o.raw_offset.item() for o in bd.dmx_offsets(model)]
    model.train()
    bits_before = bd.average_bits(model).item()
    _train(model, tmp_path, steps=8, target=5.0, lam=5.0, lr=0.05)
    after = [o.raw_offset.item() for o in bd.dmx_offsets(model)]
    assert all(a < b for a, b in zip(after, before))
    model.train()
    bd.set_temperature(model, 0.4)
    assert bd.average_bits(model).item() < bits_before
    assert all(entry["weight"] in ("e2m1", "e4m3") for entry in bd.format_map(model).values())


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_takes_the_given_momentum(momentum, tmp_path):
    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct)
    args = training_arguments(str(tmp_path), steps=1, batch_size=4, lr=1.0, seed=0)
    trainer = DMXTrainer(
        model, args, TargetAwarePenalty(5.0, 5.0), momentum=momentum, train_dataset=_token_data())
    group = trainer.create_optimizer().param_groups[0]
    assert (group["momentum"], group["nesterov"]) == (momentum, momentum > 0)


def test_linear_lr_schedule_falls_to_zero_at_the_last_step(tmp_path):
    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct)
    args = training_arguments(str(tmp_path), steps=4, batch_size=4, lr=2.0, lr_schedule="linear")
    trainer = DMXTrainer(model, args, TargetAwarePenalty(5.0, 5.0), train_dataset=_token_data())
    trainer.create_optimizer_and_scheduler(num_training_steps=4)
    rates = []
    for _ in range(4):
        rates.append(trainer.lr_scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert rates == pytest.approx([2.0, 1.5, 1.0, 0.5])
    assert trainer.lr_scheduler.get_last_lr()[0] == 0.0


def test_weights_stay_frozen(tmp_path):
    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct)
    weight = model.model.layers[0].mlp.down_proj.weight.detach().clone()
    _train(model, tmp_path, steps=3)
    assert torch.equal(model.model.layers[0].mlp.down_proj.weight, weight)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith("raw_offset") for n in trainable)


def test_checkpoints_hold_only_the_offsets(tmp_path):
    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct)
    _train(model, tmp_path, steps=4, save_steps=2)
    checkpoint = tmp_path / "checkpoint-4"
    state = torch.load(checkpoint / "dmx_offsets.pt")
    assert len(state) == 14 and all(v.numel() == 1 for v in state.values())
    assert not any(
        name.endswith((".safetensors", ".bin")) and "model" in name
        for name in os.listdir(checkpoint))


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path):
    data = _token_data()
    full = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct)
    _spread_offsets(full, high=1.6)
    _train(full, tmp_path / "full", steps=6, lr=0.5, target=5.0, data=data)

    interrupted = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct)
    _spread_offsets(interrupted, high=1.6)
    # Stop after 3 of 6 steps (as a crash would), then resume in a fresh process state.
    args_dir = tmp_path / "part"
    args = training_arguments(str(args_dir), steps=6, batch_size=4, lr=0.5, seed=0, save_steps=3)
    trainer = DMXTrainer(interrupted, args, TargetAwarePenalty(5.0, 5.0), train_dataset=data)

    class StopAtThree(TrainerCallback):

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                control.should_training_stop = True

    trainer.add_callback(StopAtThree())
    trainer.train()
    resumed = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct)
    _spread_offsets(resumed, seed=7)  # whatever it starts from, the checkpoint wins
    _train(
        resumed,
        args_dir,
        steps=6,
        lr=0.5,
        target=5.0,
        data=data,
        save_steps=3,
        resume=str(args_dir / "checkpoint-3"))
    full_offsets = torch.stack([o.raw_offset.detach() for o in bd.dmx_offsets(full)])
    resumed_offsets = torch.stack([o.raw_offset.detach() for o in bd.dmx_offsets(resumed)])
    assert torch.allclose(full_offsets, resumed_offsets, atol=1e-6)
    assert bd.format_map(full) == bd.format_map(resumed)


def test_non_finite_loss_stops_with_a_message(tmp_path):
    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="Last good checkpoint"):
        _train(model, tmp_path, steps=2)


@pytest.mark.parametrize("weighting", ["simple", "size", "memory"])
@pytest.mark.parametrize("scales", [False, True])
def test_projection_never_exceeds_the_target(weighting, scales):
    model = quantize_tiny_llama(DMXFloatStaircaseWeight, DMXFloatStaircaseAct)
    model(input_ids=torch.randint(0, 96, (1, 16)))
    _spread_offsets(model, high=2.0)
    low = 4.25 if scales else 4.0
    for target in [low + 0.01 * i for i in range(0, 401, 7)]:
        result = project_model(model, target, weighting, include_scale_bits=scales)
        report = bd.bits_report(model)[weighting + ("_with_scales" if scales else "")]
        assert report == pytest.approx(result.average, abs=1e-9)
        assert report <= target + 1e-9
        assert target - report < 4.0 / 7  # it uses the budget: within one layer's step


def test_projection_prefers_layers_training_pushed_up():
    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct)
    values = [0.0] * 14
    values[6] = 1.9  # model.layers.0.mlp.down_proj
    values[2] = 1.2  # model.layers.0.self_attn.v_proj
    _set_offsets(model, values)
    project_model(
        model, 4.0 + 4.0 / 14 + 1e-9, "simple", False)  # room for exactly one layer at MXFP8
    fmap = bd.format_map(model)
    assert fmap["model.layers.0.mlp.down_proj"]["weight"] == "e4m3"
    assert sum(e["weight"] == "e4m3" for e in fmap.values()) == 1


def test_an_offset_starts_where_it_was_initialised():
    assert DMXOffset("mxfp8-mxfp4", init=1.5).start_offset == 1.5


def test_projection_leaves_layers_training_lowered_at_their_start():
    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct)
    values = [0.3 if i % 2 else -0.2 for i in range(14)]  # started at 0: odd raised, even lowered
    _set_offsets(model, values)
    result = project_model(model, 8.0, "simple", False)  # room for every layer at MXFP8
    fmap = bd.format_map(model)
    names = [name for name in fmap if name != "lm_head"]
    assert [fmap[name]["weight"] for name in names] == ["e2m1", "e4m3"] * 7
    assert result.average == pytest.approx(6.0) and result.lowered == 7


def test_projection_fills_the_budget_in_offset_order_when_no_start_is_known():
    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct)
    _set_offsets(model, [0.3 if i % 2 else -0.2 for i in range(14)])
    problem = budget_problem(model)
    for unit in problem.units:
        unit.start_offset = None  # a run recorded before start offsets were
    assert project(problem, 8.0, "simple", False).average == pytest.approx(8.0)


def test_a_lowered_offset_keeps_at_most_the_format_it_started_on():
    unit = Unit(1.8, "e2m1,e2m3,e4m3", [Member("l0", "weight", 64)], start_offset=2.0)
    assert project(BudgetProblem([unit], []), 8.0, "simple", False).betas == [2]
    unit.raw_offset = 2.1  # raised past its start: the budget may take it higher
    assert project(BudgetProblem([unit], []), 8.0, "simple", False).betas == [4]


def test_a_warm_start_moves_the_start_offsets():
    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct)
    start = project_model(model, 6.0)
    init_offsets(model, start)
    assert [o.start_offset for o in bd.dmx_offsets(model)] == [float(b) for b in start.betas]


def test_a_budget_start_averages_the_budget_at_the_start_temperature():
    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct)
    start = budget_start_offsets(model, 6.0, temperature=0.4, weighting="simple")
    offsets = bd.dmx_offsets(model)
    assert 0.0 < start < offsets[0].ladder.span
    assert [o.raw_offset.item() for o in offsets] == [start] * len(offsets)
    bd.set_temperature(model, 0.4)
    for offset in offsets:
        offset.train()
    assert float(bd.average_bits(model, "simple")) == pytest.approx(6.0, abs=1e-6)


def test_a_budget_start_the_ladders_cannot_reach_puts_every_offset_at_the_top():
    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct)
    start = budget_start_offsets(model, 99.0, temperature=0.4, weighting="simple")
    assert start > bd.dmx_offsets(model)[0].ladder.span


def test_start_offsets_travel_with_a_run_directory(tmp_path):
    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct)
    _set_offsets(model, [0.3 if i % 3 else -0.2 for i in range(14)])
    save_problem(budget_problem(model), str(tmp_path))
    reloaded = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct)
    for offset in bd.dmx_offsets(reloaded):
        offset.start_offset = None
    restore_start_offsets(reloaded, load_problem(str(tmp_path)))
    assert [o.start_offset for o in bd.dmx_offsets(reloaded)] == [0.0] * 14
    assert retarget(str(tmp_path), 8.0)["avg_bits"] == retarget(model, 8.0)["avg_bits"] < 8.0


def test_start_offsets_from_another_model_are_refused(tmp_path):
    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct)
    bd.tie_offsets(model, bd.tie_groups(model, "qkv-gateup"))
    save_problem(budget_problem(model), str(tmp_path))
    with pytest.raises(ValueError, match="recorded offsets for a model with 14"):
        restore_start_offsets(
            quantize_tiny_llama(DMXFloatWeight, DMXFloatAct), load_problem(str(tmp_path)))


def test_impossible_target_is_refused_with_the_reachable_minimum():
    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct)
    with pytest.raises(ValueError, match="below what this model can reach"):
        project_model(model, 3.5)


def test_retarget_from_a_run_directory_needs_no_model(tmp_path):
    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct)
    _spread_offsets(model)
    save_problem(budget_problem(model), str(tmp_path))
    for target in (4.5, 6.0, 7.5):
        from_dir = retarget(str(tmp_path), target)
        from_model = retarget(model, target)
        assert from_dir["format_map"] == from_model["format_map"]
        assert from_dir["avg_bits"] == pytest.approx(from_model["avg_bits"])
        assert from_dir["avg_bits"] <= target


def test_tied_layers_share_one_format():
    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct)
    groups = bd.tie_groups(model, "qkv-gateup")
    assert len(groups) == 4 and [
        "model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"
    ] in groups
    bd.tie_offsets(model, groups)
    assert len(bd.dmx_offsets(model)) == 14 - 4 - 2
    _spread_offsets(model)
    project_model(model, 6.0)
    fmap = bd.format_map(model)
    for group in groups:
        assert len({fmap[name]["weight"] for name in group}) == 1


@pytest.mark.parametrize("raw,beta", [(1.3, 2.0), (0.7, 0.0), (-0.5, 0.0), (2.6, 2.0)])
def test_straight_through_rounding_is_discrete_forward(raw, beta, ignore_missing_keys):
    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct)
    bd.set_rounding(model, "ste")
    offset = bd.dmx_offsets(model)[0]
    offset.raw_offset.data.fill_(raw)
    offset.train()
    assert float(offset()) == beta


def test_straight_through_rounding_passes_the_gradient_inside_the_ladder(ignore_missing_keys):
    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct)
    bd.set_rounding(model, "ste")
    offset = bd.dmx_offsets(model)[0]
    offset.raw_offset.data.fill_(0.8)
    offset.train()
    offset().backward()
    assert float(offset.raw_offset.grad) == 1.0


def test_unknown_rounding_is_refused(ignore_missing_keys):
    with pytest.raises(ValueError, match="Unknown rounding"):
        bd.set_rounding(quantize_tiny_llama(DMXFloatWeight, DMXFloatAct), "stochastic")


def test_temperature_and_layers_per_format_reach_trainer_state(tmp_path):
    import json
    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct)
    _train(model, tmp_path, steps=4, save_steps=4, logging_steps=1, skip_settled_steps=False)
    state = json.loads((tmp_path / "checkpoint-4" / "trainer_state.json").read_text())
    logged = [entry for entry in state["log_history"] if "loss" in entry]
    assert len(logged) == 4
    assert all(entry["temperature"] > 0 and "avg_bits" in entry for entry in logged)
    assert logged[-1]["temperature"] == pytest.approx(20.0)
    assert all(sum(v for k, v in e.items() if k.startswith("layers_")) == 14 for e in logged)
