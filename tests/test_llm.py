# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The brevitas_dmx_llm entrypoint on a tiny local Llama and locally made text."""

import json
import os

from conftest import tiny_run_argv
import pytest
import torch

from brevitas_dmx import llm


def _argv(model, data, out, *extra):
    return tiny_run_argv(
        model,
        data,
        out,
        "--dmx-target-bits",
        "6",
        "--dmx-steps",
        "6",
        "--dmx-batch-size",
        "4",
        "--dmx-eval-windows",
        "6",
        *extra)


@pytest.fixture(scope="module")
def finished_run(tiny_folder, text_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert llm.main(_argv(tiny_folder, text_file, out)) == 0
    return out


def test_run_writes_format_map_metrics_plot_and_offsets(finished_run):
    names = set(os.listdir(finished_run))
    assert {
        "format_map.json",
        "metrics.json",
        "bits_per_layer.png",
        "dmx_offsets.pt",
        "budget_units.json",
        "checkpoints"
    } <= names
    metrics = json.loads((finished_run / "metrics.json").read_text())
    for key in ("float_ppl",
                "quant_ppl",
                "target_bits",
                "avg_bits",
                "avg_bits_with_scales",
                "format_counts",
                "train_time_s",
                "peak_mem_bytes"):
        assert key in metrics
    assert metrics["avg_bits_with_scales"] <= 6.0  # the default budget: memory with scales
    assert metrics["avg_bits_with_scales"] == pytest.approx(metrics["avg_bits"] + 0.25)
    fmap = json.loads((finished_run / "format_map.json").read_text())
    assert len(fmap) == 14 and sum(metrics["format_counts"].values()) == 14
    assert {e["weight"] for e in fmap.values()} <= {"e2m1", "e2m3", "e4m3"}


def test_resume_of_a_finished_run_keeps_its_result(finished_run, tiny_folder, text_file, tmp_path):
    before = json.loads((finished_run / "format_map.json").read_text())
    argv = _argv(tiny_folder, text_file, tmp_path / "unused", "--dmx-resume", str(finished_run))
    assert llm.main(argv) == 0
    assert json.loads((finished_run / "format_map.json").read_text()) == before


def test_budget_with_scales_and_size_average(tiny_folder, text_file, tmp_path):
    argv = _argv(
        tiny_folder,
        text_file,
        tmp_path,
        "--dmx-average",
        "memory",
        "--dmx-budget-with-scales",
        "--dmx-skip-baselines")
    argv[argv.index("--dmx-target-bits") + 1] = "5.5"
    assert llm.main(argv) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["avg_bits_with_scales"] <= 5.5
    assert metrics["budget_binds"] == "memory with scales"


@pytest.mark.parametrize(
    "change,message",
    [
        (
            {
                "--dmx-target-bits": "3"
            },
            "--dmx-target-bits 3 is outside .* 4.25 to 8.25 bits \\(with scale bits\\)"),
        ({
            "--dmx-target-bits": "9"
        }, "--dmx-target-bits 9 is outside .* 4.25 to 8.25 bits"),
        ({
            "--dmx-ladder": "mxfp6-mxfp4", "--dmx-target-bits": "7"
        }, "4.25 to 6.25 bits"),
        ({
            "--dataset": "/nonexistent/text.txt"
        }, "file not found"),
        ({
            "--dataset": "/tmp/data.csv"
        }, "local .txt / .jsonl"),
        ({
            "--model": "/nonexistent/model"
        }, "no such file or folder"),
        ({
            "--nsamples": "5000"
        }, "fewer than --nsamples 5000"),
        ({
            "--dmx-temp-delay": "1.5"
        }, "--dmx-temp-delay"),
        ({
            "--dmx-steps": "0"
        }, "--dmx-steps must be positive"),
        ({
            "--dmx-grad-accum": "0"
        }, "--dmx-grad-accum must be positive"),
        ({
            "--dmx-momentum": "1"
        }, "--dmx-momentum must be in \\[0, 1\\)"),
    ],
)
def test_bad_input_fails_fast_with_a_message(
        change, message, tiny_folder, text_file, tmp_path, capsys, no_model_loading):
    argv = _argv(tiny_folder, text_file, tmp_path)
    for flag, value in change.items():
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    assert llm.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("brevitas_dmx_llm: error:")
    import re
    assert re.search(message, err), err


def test_dmx_flags_without_dmx_are_refused(tiny_folder, capsys, no_model_loading):
    code = llm.main(["--model", tiny_folder, "--dmx-target-bits", "6", "--dmx-steps", "10"])
    assert code == 2
    assert "--dmx-target-bits, --dmx-steps need --dmx" in capsys.readouterr().err


def test_target_is_required(tiny_folder, text_file, capsys, no_model_loading):
    argv = ["--model", tiny_folder, "--dataset", text_file, "--dmx"]
    assert llm.main(argv) == 2
    assert "--dmx-method dmx needs --dmx-target-bits, between 4.25 and 8.25" in capsys.readouterr(
    ).err


def test_brevitas_flags_that_do_not_compose_yet_are_refused_up_front(
        tiny_folder, text_file, tmp_path, capsys, no_model_loading):
    argv = _argv(tiny_folder, text_file, tmp_path, "--ln-affine-merge", "--bias-corr")
    assert llm.main(argv) == 2
    err = capsys.readouterr().err
    assert "--bias-corr" in err and "--ln-affine-merge" in err and "cannot be combined with --dmx" in err


def test_unknown_ladder_is_refused_naming_the_flag(tiny_folder, capsys, no_model_loading):
    assert llm.main(["--model", tiny_folder, "--dmx", "--dmx-ladder", "mxfp16"]) == 2
    assert "--dmx-ladder: Unknown ladder 'mxfp16'" in capsys.readouterr().err


def test_yaml_config_sets_defaults(tiny_folder, text_file, tmp_path, capsys, no_model_loading):
    config = tmp_path / "dmx.yml"
    config.write_text("dmx: true\ndmx_target_bits: 12\n")
    argv = ["--config", str(config), "--model", tiny_folder, "--dataset", text_file]
    assert llm.main(argv) == 2
    assert "--dmx-target-bits 12 is outside" in capsys.readouterr().err


def test_plot_draws_a_block_by_projection_grid_for_llm_names(finished_run, tmp_path):
    from brevitas_dmx.evaluate import _grid
    from brevitas_dmx.evaluate import plot_bits
    fmap = json.loads((finished_run / "format_map.json").read_text())
    blocks, columns, _ = _grid(fmap)
    assert blocks == [0, 1] and columns[0] == "q_proj" and columns[-1] == "down_proj"
    assert os.path.getsize(plot_bits(fmap, str(tmp_path / "grid.png"))) > 1000
    other = {"fc1": {"weight": "e2m1", "input": None, "bits": 4.0}}
    assert _grid(other) is None
    assert os.path.getsize(plot_bits(other, str(tmp_path / "bars.png"))) > 1000


def test_a_run_records_the_steps_its_settled_offsets_skipped(tiny_folder, text_file, tmp_path):
    hot = ("--dmx-skip-baselines", "--dmx-temp-start", "1e4", "--dmx-temp-end", "1e4")
    assert llm.main(_argv(tiny_folder, text_file, tmp_path, *hot)) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["train_settled_steps"] == metrics["train_steps"] > 0


def test_accumulated_micro_batches_learn_the_offsets_of_the_whole_batch(
        tiny_folder, text_file, tmp_path):
    whole_dir, accumulated_dir = tmp_path / "whole", tmp_path / "accumulated"
    assert llm.main(_argv(tiny_folder, text_file, whole_dir, "--dmx-skip-baselines")) == 0
    argv = _argv(
        tiny_folder, text_file, accumulated_dir, "--dmx-skip-baselines", "--dmx-grad-accum", "2")
    argv[argv.index("--dmx-batch-size") + 1] = "2"  # 2 x 2 samples per step against 1 x 4
    assert llm.main(argv) == 0
    assert json.loads((accumulated_dir / "metrics.json").read_text())["train_grad_accum"] == 2
    whole = torch.load(whole_dir / "dmx_offsets.pt")
    accumulated = torch.load(accumulated_dir / "dmx_offsets.pt")
    assert whole.keys() == accumulated.keys()
    # the offsets move by 1e-5 to 6e-3 here; leaving out the weights' sums moves them by 3e-5
    for name in whole:
        torch.testing.assert_close(accumulated[name], whole[name], rtol=1e-4, atol=1e-7)


def test_metrics_record_the_offsets_sgd_settings(finished_run):
    metrics = json.loads((finished_run / "metrics.json").read_text())
    assert (metrics["train_lr"], metrics["train_momentum"]) == (1.0, 0.99)


def test_an_adam_run_records_no_momentum(tiny_folder, text_file, tmp_path):
    argv = _argv(
        tiny_folder, text_file, tmp_path, "--dmx-optimizer", "adam", "--dmx-skip-baselines")
    assert llm.main(argv) == 0
    assert json.loads((tmp_path / "metrics.json").read_text()).get("train_momentum") is None


def test_a_held_budget_run_steps_back_onto_the_budget_after_every_step(
        tiny_folder, text_file, tmp_path, monkeypatch):
    from brevitas_dmx.solver import HeldBudget
    held = []
    hold = HeldBudget.hold
    monkeypatch.setattr(HeldBudget, "hold", lambda self, model: held.append(hold(self, model)))
    argv = _argv(
        tiny_folder,
        text_file,
        tmp_path,
        "--dmx-regularizer",
        "hold",
        "--dmx-steps",
        "3",
        "--dmx-skip-baselines")
    assert llm.main(argv) == 0
    assert len(held) == 3


def test_bfloat16_run(tiny_folder, text_file, tmp_path):
    argv = _argv(tiny_folder, text_file, tmp_path, "--dtype", "bfloat16", "--dmx-skip-baselines")
    assert llm.main(argv) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["avg_bits"] <= 6.0
    assert 1.0 < metrics["quant_ppl"] < 1e4  # finite and a perplexity


def test_fisher_scores_of_another_dtype_are_cached_apart(tiny_folder, text_file, tmp_path):
    cache = tmp_path / "scores.json"
    for dtype in ("float32", "bfloat16"):
        argv = _argv(
            tiny_folder,
            text_file,
            tmp_path / dtype,
            "--dmx-method",
            "fisher",
            "--dmx-sensitivity-samples",
            "2",
            "--dmx-sensitivity-cache",
            str(cache),
            "--dtype",
            dtype,
            "--dmx-skip-baselines")
        assert llm.main(argv) == 0
    assert len(json.loads(cache.read_text())) == 2


def _float_argv(model, data, out, cache):
    flags = "--seqlen 32 --nsamples 8 --dmx --dmx-method float --dmx-eval-windows 6".split()
    files = ["--dmx-float-cache", str(cache), "--dmx-output", str(out)]
    return ["--model", model, "--dataset", data, *flags, *files]


def test_float_cache_spares_the_second_float_evaluation(
        tiny_folder, text_file, tmp_path, monkeypatch):
    cache = tmp_path / "float_nll.json"
    assert llm.main(_float_argv(tiny_folder, text_file, tmp_path / "first", cache)) == 0
    first = json.loads((tmp_path / "first" / "metrics.json").read_text())

    def refuse(*args, **kwargs):
        raise AssertionError("the float model was evaluated again")

    monkeypatch.setattr(llm.cache, "window_nll", refuse)
    assert llm.main(_float_argv(tiny_folder, text_file, tmp_path / "second", cache)) == 0
    second = json.loads((tmp_path / "second" / "metrics.json").read_text())
    assert second["float_ppl"] == first["float_ppl"]
    assert second["window_nll"] == first["window_nll"]


def test_float_cache_is_not_used_for_other_windows(tiny_folder, text_file, tmp_path):
    cache = tmp_path / "float_nll.json"
    assert llm.main(_float_argv(tiny_folder, text_file, tmp_path / "six", cache)) == 0
    argv = _float_argv(tiny_folder, text_file, tmp_path / "four", cache)
    argv[argv.index("--dmx-eval-windows") + 1] = "4"
    assert llm.main(argv) == 0
    assert len(json.loads(cache.read_text())) == 2
    metrics = json.loads((tmp_path / "four" / "metrics.json").read_text())
    assert len(metrics["window_nll"]) == 4


def test_final_line_names_what_the_output_folder_holds(tmp_path):
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / "dmx_offsets.pt").write_bytes(b"")
    (out / "qonnx").mkdir()
    line = llm._written_summary(str(out), [str(tmp_path / "model"), str(out / "qonnx")])
    assert line == f"output folder {out}: checkpoints/, dmx_offsets.pt, qonnx/; wrote {tmp_path}/model"


@pytest.fixture(scope="module")
def terminated_run(tiny_folder, text_file, tmp_path_factory):
    """A run sent SIGTERM after its third training step: (exit code, stderr, argv, folder)."""
    import signal

    from brevitas_dmx.solver.trainer import DMXTrainer
    out = tmp_path_factory.mktemp("terminated")
    argv = _argv(tiny_folder, text_file, out, "--dmx-skip-baselines")
    original = DMXTrainer.training_step

    def step_then_terminate(self, *args, **kwargs):
        loss = original(self, *args, **kwargs)
        if self.state.global_step == 3:  # three steps done, each one checkpointed
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    capture = pytest.MonkeyPatch()
    capture.setattr(DMXTrainer, "training_step", step_then_terminate)
    import contextlib
    import io
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            code = llm.main(argv)
    finally:
        capture.undo()
    return code, err.getvalue(), argv, out


def test_sigterm_ends_training_with_the_resume_command(terminated_run):
    code, err, argv, out = terminated_run
    assert code == 143 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    checkpoint = os.path.join(str(out), "checkpoints", "checkpoint-3")
    assert last.startswith("brevitas_dmx_llm: interrupted; last checkpoint ")
    assert checkpoint in last and last.endswith(f"--dmx-resume {out}")


def test_printed_resume_command_finishes_the_run(terminated_run):
    import shlex
    _, err, _, out = terminated_run
    command = shlex.split(err.strip().splitlines()[-1].split("resume with: ", 1)[1])
    assert command[0] == "brevitas_dmx_llm" and llm.main(command[1:]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_steps"] == 6 and metrics["avg_bits"] <= 6.0


def test_busy_machine_note_advises_one_thread():
    note = llm.busy_machine_note(load=2.1, cores=2, threads=2, environ={})
    assert "OMP_NUM_THREADS=1" in note and "load 2.1 on 2 cores" in note


def test_busy_machine_note_is_silent_when_threads_are_set_or_cores_idle():
    assert llm.busy_machine_note(2.1, 2, 2, {"OMP_NUM_THREADS": "1"}) is None
    assert llm.busy_machine_note(0.3, 2, 2, {}) is None
    assert llm.busy_machine_note(2.1, 2, 1, {}) is None


def test_interrupted_retarget_run_is_run_again_not_resumed(tmp_path):
    import argparse
    args = argparse.Namespace(
        dmx_retarget_from=str(tmp_path / "source"), dmx_resume=None, dmx_output=str(tmp_path))
    note = llm.interruption_note(["--dmx", "--dmx-retarget-from", "src"], args)
    assert note.endswith("run again: brevitas_dmx_llm --dmx --dmx-retarget-from src")
    assert "--dmx-resume" not in note


def _console(*argv) -> str:
    """stdout and stderr of the installed console command's code, in a fresh process."""
    import subprocess
    import sys
    code = "from brevitas_dmx.cli import console_main; console_main()"
    out = subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"))
    return out.stdout + out.stderr


def test_a_refused_command_prints_exactly_one_line(tiny_folder, text_file, tmp_path):
    out = _console(
        *tiny_run_argv(
            tiny_folder, text_file, tmp_path, "--dmx-target-bits", "6", "--dmx-steps", "0"))
    assert out.splitlines() == ["brevitas_dmx_llm: error: --dmx-steps must be positive, got 0"]


def test_an_abbreviated_flag_is_refused(tiny_folder, text_file, tmp_path, capsys):
    argv = tiny_run_argv(tiny_folder, text_file, tmp_path, "--dmx-target-bits", "6")
    assert llm.main(argv + ["--dmx-step", "10"]) == 2
    assert "unrecognized arguments: --dmx-step 10" in capsys.readouterr().err


def test_one_flag_without_dmx_is_named_in_the_singular(tiny_folder, capsys, no_model_loading):
    assert llm.main(["--model", tiny_folder, "--dmx-target-bits", "6"]) == 2
    assert "--dmx-target-bits needs --dmx" in capsys.readouterr().err


def test_a_run_without_seqlen_uses_the_device_default_and_says_so(
        tiny_folder, text_file, tmp_path, capsys):
    from brevitas_dmx.llm.validate import default_seqlen
    argv = tiny_run_argv(tiny_folder, text_file, tmp_path, "--dmx-method", "float")
    del argv[argv.index("--seqlen"):argv.index("--seqlen") + 2]
    assert llm.main(argv + ["--dmx-eval-windows", "1"]) == 0
    assert f"--seqlen not set: windows of {default_seqlen()} tokens" in capsys.readouterr().out
    assert json.loads((tmp_path / "metrics.json").read_text())["seqlen"] == default_seqlen()


def test_metrics_carry_their_schema_version(finished_run):
    metrics = json.loads((finished_run / "metrics.json").read_text())
    assert metrics["schema_version"] == llm.SCHEMA_VERSION


def test_results_written_before_the_schema_version_read_as_version_one():
    record = llm.RunRecord.from_json(
        {
            "method": "dmx", "quant_ppl": 30.0, "uniform_mxfp4_e2m1_ppl": 40
        })
    assert record.schema_version == 1 and record.uniform == {"mxfp4_e2m1": 40}


def test_validation_leaves_the_arguments_as_parsed(tiny_folder, text_file, tmp_path):
    parser, args, _, defaults = llm.parse(
        tiny_run_argv(tiny_folder, text_file, tmp_path, "--dmx-target-bits", "6"))
    before = dict(vars(args))
    plan = llm.validate(parser, args, defaults)
    assert vars(args) == before
    assert [f.name for f in plan.ladder.formats] == ["e2m1", "e2m3"]
    assert plan.rounding == "anneal" and plan.ladder_auto and args.dmx_ladder == "auto"


def test_a_registered_method_runs_through_the_pipeline(tiny_folder, text_file, tmp_path):
    """A method defined here, registered, and run by name: no other module changes."""

    class AllHigh(llm.Method):
        name = "all-high"

        def preset(self, plan, layer_names):
            return {name: plan.ladder.formats[-1].name for name in layer_names}

    from brevitas_dmx.llm import methods
    llm.register_method(AllHigh)
    try:
        argv = tiny_run_argv(tiny_folder, text_file, tmp_path, "--dmx-method", "all-high")
        assert llm.main(argv + ["--dmx-ladder", "e2m1,e4m3"]) == 0
    finally:
        del methods.REGISTRY["all-high"]
    fmap = json.loads((tmp_path / "format_map.json").read_text())
    assert {e["weight"] for e in fmap.values()} == {"e4m3"}
    assert json.loads((tmp_path / "metrics.json").read_text())["method"] == "all-high"


@pytest.fixture(scope="module")
def distilled_run(tiny_folder, text_file, tmp_path_factory):
    """A kd run scored on two more texts."""
    from conftest import local_text
    folder = tmp_path_factory.mktemp("kd")
    texts = []
    for seed in (1, 2):
        path = folder / f"text{seed}.txt"
        path.write_text(local_text(300, seed=seed))
        texts.append(str(path))
    out = folder / "run"
    argv = _argv(tiny_folder, text_file, out, "--dmx-loss", "kd", "--dmx-eval-datasets", *texts)
    assert llm.main(argv + ["--dmx-eval-seqlen", "64", "--dmx-eval-text-windows", "3"]) == 0
    return out, texts


def test_every_extra_text_gets_its_perplexity_in_the_metrics(distilled_run):
    out, texts = distilled_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["texts"]) == texts
    for text in metrics["texts"].values():
        assert text["seqlen"] == 64 and text["windows"] == 3 and len(text["window_nll"]) == 3
        assert text["quant_ppl"] > 0 and set(text["uniform"]) == {"mxfp4_e2m1", "mxfp6_e2m3"}
        assert set(text["paired"]) == {"float", "uniform_mxfp4_e2m1", "uniform_mxfp6_e2m3"}


def test_extra_texts_are_scored_on_different_windows(distilled_run):
    metrics = json.loads((distilled_run[0] / "metrics.json").read_text())
    fingerprints = {t["fingerprint"] for t in metrics["texts"].values()}
    assert len(fingerprints) == 2 and metrics["eval_fingerprint"] not in fingerprints


def test_an_unknown_extra_text_is_refused_before_the_model_loads(
        tiny_folder, text_file, tmp_path, capsys, no_model_loading):
    argv = _argv(tiny_folder, text_file, tmp_path, "--dmx-eval-datasets", "nowhere.txt")
    assert llm.main(argv) == 2
    assert "--dmx-eval-datasets 'nowhere.txt'" in capsys.readouterr().err


def test_kd_needs_training(tiny_folder, text_file, tmp_path, capsys, no_model_loading):
    argv = tiny_run_argv(tiny_folder, text_file, tmp_path, "--dmx-method", "float")
    assert llm.main(argv + ["--dmx-loss", "kd"]) == 2
    assert "--dmx-loss kd is dMX's training objective" in capsys.readouterr().err
