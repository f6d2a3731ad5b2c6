# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Two processes (torchrun, gloo on the CPU) against one, on a tiny Llama: same offsets on both
ranks, the same offsets, format map and perplexities as a single process with the same global
batch and seed, and resume from a checkpoint of the two-process run."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from brevitas_dmx import distributed

# yapf: disable
ARGS = [
    "--seqlen", "32", "--nsamples", "16", "--dmx", "--dmx-target-bits", "6", "--dmx-steps", "6",
    "--dmx-batch-size", "4", "--dmx-eval-windows", "6", "--seed", "3"
]
# yapf: enable


def _env(**extra):
    env = dict(os.environ)
    # one thread per process: both processes fit on a small CI machine, and the single-process
    # run uses the same kernels
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("WORLD_SIZE", None)
    env.update(extra)
    return env


def _run(command, env, timeout=600):
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


def _llm(processes, model, data, out, *extra, env=None):
    if processes == 1:
        launcher = [sys.executable, "-m", "brevitas_dmx.llm"]
    else:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={processes}",
            "-m",
            "brevitas_dmx.llm"
        ]
    argv = ["--model", model, "--dataset", data, *ARGS, "--dmx-output", str(out), *extra]
    return _run(launcher + argv, env or _env())


def _offsets(path):
    return torch.load(path, map_location="cpu")


def _assert_close_offsets(a, b, atol=1e-7):
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs()) for k in a)
    assert worst <= atol, f"offsets differ by {worst}"


@pytest.fixture(scope="module")
def runs(tiny_folder, text_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    _llm(1, tiny_folder, text_file, root / "single")
    ranks = root / "ranks"
    two = _llm(
        2,
        tiny_folder,
        text_file,
        root / "ddp",
        env=_env(**{distributed.RANK_OFFSETS_ENV: str(ranks)}))
    return root, two


def test_offsets_are_identical_on_both_ranks(runs):
    root, _ = runs
    rank0 = _offsets(root / "ranks" / "offsets_rank0.pt")
    rank1 = _offsets(root / "ranks" / "offsets_rank1.pt")
    assert len(rank0) == 14
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    # training moved them: the comparison below is not between untouched zeros
    assert max(float(v.abs()) for v in rank0.values()) > 1e-4


def test_two_processes_give_the_single_process_result(runs):
    root, two = runs
    single, ddp = root / "single", root / "ddp"
    _assert_close_offsets(_offsets(single / "dmx_offsets.pt"), _offsets(ddp / "dmx_offsets.pt"))
    # the gradient all-reduce sums in another order: equal to float tolerance, not bit for bit
    assert json.loads((single / "format_map.json").read_text()) == json.loads(
        (ddp / "format_map.json").read_text())
    m1 = json.loads((single / "metrics.json").read_text())
    m2 = json.loads((ddp / "metrics.json").read_text())
    assert (m1["world_size"], m2["world_size"], m2["backend"]) == (1, 2, "gloo")
    for key in ("float_ppl",
                "quant_ppl",
                "uniform_mxfp4_e2m1_ppl",
                "uniform_mxfp6_e2m3_ppl",
                "avg_bits",
                "avg_bits_with_scales",
                "learned_avg_bits"):
        assert m2[key] == pytest.approx(m1[key], rel=1e-9), key
    # every window evaluated once, by one rank or the other
    assert m2["window_nll"] == pytest.approx(m1["window_nll"], rel=1e-9)
    assert m1["format_counts"] == m2["format_counts"]
    # rank 0 alone prints the report and appends one result line
    assert two.stdout.count("Share of the low->high format perplexity gap closed") == 1
    assert len((ddp / "results.jsonl").read_text().splitlines()) == 1


def test_two_process_resume_from_a_checkpoint(runs, tiny_folder, text_file):
    root, _ = runs
    resumed = root / "resumed"
    shutil.copytree(root / "ddp" / "checkpoints", resumed / "checkpoints")
    shutil.rmtree(resumed / "checkpoints" / "checkpoint-6")  # interrupted after step 5
    assert {"rng_state_0.pth", "rng_state_1.pth",
            "dmx_offsets.pt"} <= set(os.listdir(resumed / "checkpoints" / "checkpoint-5"))
    done = _llm(2, tiny_folder, text_file, root / "unused", "--dmx-resume", str(resumed))
    assert "resuming from" in done.stdout and "checkpoint-5" in done.stdout
    _assert_close_offsets(
        _offsets(root / "ddp" / "dmx_offsets.pt"), _offsets(resumed / "dmx_offsets.pt"), atol=0)
    assert json.loads((resumed / "format_map.json").read_text()) == json.loads(
        (root / "ddp" / "format_map.json").read_text())


def test_two_processes_accumulating_micro_batches_give_the_whole_batch_result(
        runs, tiny_folder, text_file):
    # 2 micro-batches of 2 samples (one per rank), sharing the quantized weights, against one
    # process taking the 4 samples at once: DDP averages only in the last micro-batch's backward,
    # where the shared weight sums also run
    root, _ = runs
    accumulated = root / "ddp_accumulated"
    _llm(
        2,
        tiny_folder,
        text_file,
        accumulated,
        "--dmx-batch-size",
        "2",
        "--dmx-grad-accum",
        "2",
        "--dmx-skip-baselines")
    _assert_close_offsets(
        _offsets(root / "single" / "dmx_offsets.pt"),
        _offsets(accumulated / "dmx_offsets.pt"),
        atol=1e-5)


def test_global_batch_must_divide_among_processes(monkeypatch):
    assert distributed.per_device_batch_size(8, 2) == 4
    with pytest.raises(ValueError, match="multiple of the 3 processes"):
        distributed.per_device_batch_size(8, 3)
    from brevitas_dmx import llm
    monkeypatch.setenv("WORLD_SIZE", "3")
    parser = llm.build_parser()
    args = parser.parse_args(
        [
            "--model",
            "x",
            "--dataset",
            "wikitext2",
            "--dmx",
            "--dmx-target-bits",
            "6",
            "--dmx-batch-size",
            "8"
        ])
    with pytest.raises(llm.UsageError, match="global batch"):
        llm.validate(parser, args)


def test_single_process_helpers_are_no_ops(tiny_folder):
    assert distributed.world_size() == 1 and distributed.is_main()
    assert distributed.device().type in ("cpu", "cuda")
    from brevitas_dmx.solver.trainer import training_arguments
    assert training_arguments("unused", 2, batch_size=6).per_device_train_batch_size == 6


def test_fsdp2_shards_weights_and_keeps_offsets_identical(tmp_path):
    # accelerate enables FSDP on GPUs only; tests/fsdp_worker.py applies FSDP2 on the CPU the way
    # accelerate does with DMXTrainer's settings (offsets ignored, their gradients averaged).
    worker = os.path.join(os.path.dirname(__file__), "fsdp_worker.py")
    _run([sys.executable, worker, str(tmp_path / "single")], _env())
    _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            worker,
            str(tmp_path / "fsdp")
        ],
        _env())
    single = torch.load(tmp_path / "single" / "rank0.pt")
    rank0 = torch.load(tmp_path / "fsdp" / "rank0.pt")
    rank1 = torch.load(tmp_path / "fsdp" / "rank1.pt")
    assert rank0["sharded"] and rank1["sharded"] and not single["sharded"]
    for a, b in zip(rank0["offsets"], rank1["offsets"]):
        assert torch.equal(a, b)
    # same global batch: the single-process offsets, up to the order of float sums (the offsets
    # moved by ~1-5 in 4 steps, so this is not a comparison of untouched values)
    moved = max(float((a - 0.2).abs()) for a in single["offsets"])
    assert moved > 0.5
    worst = max(float((a - b).abs()) for a, b in zip(single["offsets"], rank0["offsets"]))
    assert worst <= 1e-5, worst
