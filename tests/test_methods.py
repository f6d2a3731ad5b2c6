# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""--dmx-method baselines, --dmx-format-map, zero-shot evaluation and the results file, through
the brevitas_dmx_llm entrypoint on a tiny local Llama."""

import json
import re

from conftest import tiny_run_argv
from conftest import write_tiny_task
import pytest

from brevitas_dmx import llm
import brevitas_dmx as dmx
from brevitas_dmx.formats import ladder as get_ladder
from brevitas_dmx.solver.projection import init_offsets


def run(tiny_folder, text_file, out, *extra):
    argv = tiny_run_argv(tiny_folder, text_file, out, "--dmx-sensitivity-samples", "4", *extra)
    assert llm.main(argv) == 0
    return json.loads((out / "metrics.json").read_text())


def formats(out):
    return json.loads((out / "format_map.json").read_text())


@pytest.fixture(scope="module")
def task_folder(tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch_module.setenv("HF_HUB_OFFLINE", "1")
    return write_tiny_task(tmp_path_factory.mktemp("tasks"))


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.mark.parametrize("method", ["kl", "fisher"])
def test_baseline_meets_the_budget_and_repeats_with_the_seed(
        method, tiny_folder, text_file, tmp_path):
    first = run(
        tiny_folder, text_file, tmp_path / "a", "--dmx-method", method, "--dmx-target-bits", "5.5")
    second = run(
        tiny_folder, text_file, tmp_path / "b", "--dmx-method", method, "--dmx-target-bits", "5.5")
    assert first["avg_bits"] <= 5.5
    assert first["bits"]["simple"] > 4  # it used the budget
    assert formats(tmp_path / "a") == formats(tmp_path / "b")
    assert first["quant_ppl"] == second["quant_ppl"]
    assert first["search_time_s"] > 0


def test_uniform_method_puts_every_layer_in_the_format(tiny_folder, text_file, tmp_path):
    metrics = run(
        tiny_folder, text_file, tmp_path, "--dmx-method", "uniform", "--dmx-format", "e2m3")
    assert {e["weight"] for e in formats(tmp_path).values()} == {"e2m3"}
    assert metrics["bits"]["memory_with_scales"] == 6.25


def test_mlp8_method_puts_mlp_layers_in_the_high_format(tiny_folder, text_file, tmp_path):
    run(tiny_folder, text_file, tmp_path, "--dmx-method", "mlp8")
    for name, entry in formats(tmp_path).items():
        assert entry["weight"] == ("e4m3" if ".mlp." in name else "e2m1")


def test_format_map_file_pins_the_listed_formats(tiny_folder, text_file, tmp_path):
    wanted = {"model.layers.0.mlp.down_proj": "e3m2", "model.layers.1.self_attn.q_proj": "e5m2"}
    path = tmp_path / "map.json"
    path.write_text(json.dumps(wanted))
    run(tiny_folder, text_file, tmp_path / "run", "--dmx-format-map", str(path))
    got = formats(tmp_path / "run")
    assert {name: got[name]["weight"] for name in wanted} == wanted


def test_format_map_over_the_target_is_refused(tiny_folder, text_file, tmp_path, capsys):
    argv = tiny_run_argv(tiny_folder, text_file, tmp_path, "--dmx-sensitivity-samples", "4")
    code = llm.main(
        argv + ["--dmx-method", "uniform", "--dmx-format", "e4m3", "--dmx-target-bits", "6"])
    assert code == 2
    assert "needs 8.25 bits, over --dmx-target-bits 6" in capsys.readouterr().err


def test_runs_append_to_one_results_file(tiny_folder, text_file, tmp_path):
    results = tmp_path / "results.jsonl"
    for method in ("float", "mlp8"):
        run(
            tiny_folder,
            text_file,
            tmp_path / method,
            "--dmx-method",
            method,
            "--dmx-results",
            str(results),
            "--dmx-label",
            f"point-{method}")
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["method"], r["label"]) for r in lines] == [
        ("float", "point-float"), ("mlp8", "point-mlp8")
    ]
    assert lines[1]["bits"]["simple"] == pytest.approx(4 + 4 * 3 / 7)


def test_zero_shot_accuracy_is_reported(tiny_folder, text_file, tmp_path, task_folder):
    metrics = run(
        tiny_folder,
        text_file,
        tmp_path,
        "--dmx-method",
        "uniform",
        "--dmx-format",
        "e2m1",
        "--dmx-eval-tasks",
        "tiny_mc",
        "--dmx-eval-include",
        task_folder,
        "--dmx-eval-limit",
        "6")
    accuracy = metrics["accuracy"]["tiny_mc"]
    assert accuracy["n"] == 6
    assert 0.0 <= accuracy["acc"] <= 1.0
    line = json.loads((tmp_path / "results.jsonl").read_text())
    assert line["accuracy"] == metrics["accuracy"]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--dmx-method", "uniform"], "--dmx-method uniform needs --dmx-format"),
        (["--dmx-method", "uniform", "--dmx-format", "e9m9"], "Unknown MX element format"),
        (["--dmx-method", "kl"], "--dmx-method kl needs --dmx-target-bits"),
        (["--dmx-format-map", "/nonexistent/map.json"], "no such file"),
        (
            [
                "--dmx-method",
                "float",
                "--dmx-eval-tasks",
                "tiny_mc",
                "--dmx-eval-include",
                "/nonexistent"
            ],
            "no such folder"),
        (["--dmx-method", "float", "--dmx-eval-tasks", "no_such_task_xyz"], "unknown zero-shot"),
    ],
)
def test_bad_method_input_fails_before_loading(
        extra, message, tiny_folder, text_file, tmp_path, capsys, no_model_loading):
    argv = tiny_run_argv(tiny_folder, text_file, tmp_path, "--dmx-sensitivity-samples", "4")
    assert llm.main(argv + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("brevitas_dmx_llm: error:") and re.search(message, err), err


@pytest.mark.parametrize(
    "content,message",
    [
        ("{not json", "is not a JSON file"),
        ('["e4m3"]', "maps layer names to formats"),
        (
            '{"model.layers.0.mlp.up_proj": "e9m9"}',
            "model.layers.0.mlp.up_proj: Unknown MX element format"),
        ('{"model.layers.0.mlp.up_proj": {"wieght": "e4m3"}}', "unknown key 'wieght'"),
    ],
)
def test_bad_format_map_file_fails_before_loading(
        content, message, tiny_folder, text_file, tmp_path, capsys, no_model_loading):
    path = tmp_path / "map.json"
    path.write_text(content)
    argv = tiny_run_argv(tiny_folder, text_file, tmp_path, "--dmx-sensitivity-samples", "4")
    assert llm.main(argv + ["--dmx-format-map", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("brevitas_dmx_llm: error: --dmx-format-map") and message in err, err


def test_format_map_of_unknown_layers_fails_before_the_float_evaluation(
        tiny_folder, text_file, tmp_path, capsys, monkeypatch):

    def refuse(*args, **kwargs):
        raise AssertionError("the float model was evaluated before the map's layers were checked")

    monkeypatch.setattr(llm.stages, "float_window_nll", refuse)
    path = tmp_path / "map.json"
    path.write_text(
        json.dumps({
            "model.layers.0.mlp.up_proj": "e4m3", "model.layers.9.mlp": "e4m3"
        }))
    argv = tiny_run_argv(tiny_folder, text_file, tmp_path, "--dmx-sensitivity-samples", "4")
    assert llm.main(argv + ["--dmx-format-map", str(path)]) == 2
    err = capsys.readouterr().err
    assert "names layers that" in err and "['model.layers.9.mlp']" in err, err


def test_deployment_flags_write_checkpoint_packed_weights_and_qonnx(
        tiny_folder, text_file, tmp_path):
    import brevitas_dmx as dmx
    from brevitas_dmx.export import load_pretrained
    metrics = run(
        tiny_folder,
        text_file,
        tmp_path / "run",
        "--dmx-method",
        "mlp8",
        "--dmx-save-pretrained",
        str(tmp_path / "ckpt"),
        "--dmx-export-qonnx",
        str(tmp_path / "model.onnx"))
    reloaded = load_pretrained(str(tmp_path / "ckpt"))
    assert dmx.format_map(reloaded) == formats(tmp_path / "run")
    assert metrics["packed_weight_bytes"] * 8 == pytest.approx(
        metrics["bits"]["memory_with_scales"] * sum(
            m.weight.numel() for n, m in reloaded.named_modules() if n in formats(tmp_path / "run"))
    )
    assert (tmp_path / "model.onnx").stat().st_size > 0


def test_fisher_warm_start_begins_training_on_the_fisher_formats(
        tiny_folder, text_file, tmp_path, monkeypatch):
    started = {}

    def record_start(model, projection):
        started["betas"] = list(projection.betas)
        init_offsets(model, projection)
        started["raw"] = [float(o.raw_offset.detach()) for o in dmx.dmx_offsets(model)]

    monkeypatch.setattr(llm.methods, "init_offsets", record_start)
    common = tiny_run_argv(
        tiny_folder,
        text_file,
        tmp_path,
        "--dmx-target-bits",
        "5.5",
        "--dmx-sensitivity-samples",
        "2",
        "--dmx-skip-baselines")
    assert llm.main(common + ["--dmx-method", "fisher", "--dmx-output", str(tmp_path / "f")]) == 0
    fisher = json.loads((tmp_path / "f" / "format_map.json").read_text())
    argv = common + [
        "--dmx-init", "fisher", "--dmx-steps", "2", "--dmx-output", str(tmp_path / "d")
    ]
    assert llm.main(argv) == 0
    assert sorted(set(started["raw"])) == sorted(set(float(b) for b in started["betas"]))
    assert len(set(started["betas"])) > 1  # the budget mixes formats, so the start is not uniform
    metrics = json.loads((tmp_path / "d" / "metrics.json").read_text())
    ladder = get_ladder(metrics["ladder"])  # the default chain's segment around the target
    fisher_betas = [
        ladder.knots[[f.name
                      for f in ladder.formats].index(fisher[name]["weight"])]
        for name in sorted(fisher)
    ]
    assert sorted(fisher_betas) == sorted(started["betas"])
    assert metrics["init"] == "fisher"


def test_a_budget_start_is_recorded_and_puts_every_offset_between_formats(
        tiny_folder, text_file, tmp_path):
    argv = tiny_run_argv(
        tiny_folder,
        text_file,
        tmp_path,
        "--dmx-target-bits",
        "5.5",
        "--dmx-skip-baselines",
        "--dmx-init",
        "budget",
        "--dmx-steps",
        "2",
        "--dmx-output",
        str(tmp_path / "d"))
    assert llm.main(argv) == 0
    metrics = json.loads((tmp_path / "d" / "metrics.json").read_text())
    ladder = get_ladder(metrics["ladder"])
    assert metrics["init"] == "budget"
    assert 0 < metrics["init_offset"] < ladder.span
    assert metrics["bits"]["memory_with_scales"] <= 5.5


def test_fisher_warm_start_needs_the_dmx_method(tiny_folder, text_file, capsys, no_model_loading):
    argv = [
        "--model",
        tiny_folder,
        "--dataset",
        text_file,
        "--dmx",
        "--dmx-method",
        "kl",
        "--dmx-target-bits",
        "5",
        "--dmx-init",
        "fisher"
    ]
    assert llm.main(argv) == 2
    assert "--dmx-init fisher is where dMX training starts" in capsys.readouterr().err
