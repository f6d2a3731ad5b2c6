# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""brevitas_dmx_pareto: the sweep, its report, and resuming without recomputing."""

import json
import math

import pytest

from brevitas_dmx import llm
from brevitas_dmx import pareto

LLM_ARGS = [
    "--",
    "--seqlen",
    "32",
    "--nsamples",
    "16",
    "--dmx-eval-windows",
    "4",
    "--dmx-sensitivity-samples",
    "4"
]


def sweep_argv(tiny_folder, text_file, out):
    return [
        "--model",
        tiny_folder,
        "--dataset",
        text_file,
        "--methods",
        "float",
        "uniform",
        "fisher",
        "--uniform-formats",
        "e2m1",
        "e4m3",
        "--targets",
        "5",
        "6",
        "--output",
        str(out)
    ] + LLM_ARGS


def labels(out):
    return [r["label"] for r in pareto.read_results(str(out / pareto.RESULTS_FILE))]


@pytest.fixture(scope="module")
def finished_sweep(tiny_folder, text_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    assert pareto.main(sweep_argv(tiny_folder, text_file, out)) == 0
    return out


def test_sweep_runs_every_point_once(finished_sweep):
    assert labels(finished_sweep) == [
        "float", "uniform-e2m1", "uniform-e4m3", "fisher-auto-5", "fisher-auto-6"
    ]


def test_sweep_writes_table_and_plot(finished_sweep):
    table = (finished_sweep / "pareto.md").read_text()
    assert "| fisher-auto-5 | fisher | 5 |" in table
    assert "gap closed" in table
    assert (finished_sweep / "pareto.png").stat().st_size > 0


def test_points_meet_their_budget_in_the_headline_average(finished_sweep):
    for record in pareto.read_results(str(finished_sweep / pareto.RESULTS_FILE)):
        if record["target_bits"] is not None:
            assert record["bits"][record["average"]] <= record["target_bits"]


def test_finished_sweep_is_not_recomputed(finished_sweep, tiny_folder, text_file, monkeypatch):

    def refuse(argv, args):
        raise AssertionError(f"recomputed a finished point: {argv}")

    monkeypatch.setattr(llm, "run", refuse)
    assert pareto.main(sweep_argv(tiny_folder, text_file, finished_sweep)) == 0
    assert len(labels(finished_sweep)) == 5


def test_interrupted_sweep_runs_only_the_missing_points(
        finished_sweep, tiny_folder, text_file, tmp_path, monkeypatch):
    lines = (finished_sweep / pareto.RESULTS_FILE).read_text().splitlines()
    (tmp_path / pareto.RESULTS_FILE).write_text("\n".join(lines[:3]) + "\n")
    ran = []
    real_run = llm.run

    def counting(argv, args):
        ran.append(argv[argv.index("--dmx-label") + 1])
        return real_run(argv, args)

    monkeypatch.setattr(llm, "run", counting)
    assert pareto.main(sweep_argv(tiny_folder, text_file, tmp_path)) == 0
    assert ran == ["fisher-auto-5", "fisher-auto-6"]
    assert len(labels(tmp_path)) == 5


def test_interrupted_dmx_point_resumes_its_training(tiny_folder, text_file, tmp_path):
    (tmp_path / "points" / "dmx-auto-5" / "checkpoints").mkdir(parents=True)
    args = pareto.build_parser().parse_args(
        [
            "--model",
            tiny_folder,
            "--dataset",
            text_file,
            "--targets",
            "5",
            "--output",
            str(tmp_path)
        ])
    argv = dict(pareto.plan_points(args, []))["dmx-auto-5"]
    assert argv[argv.index("--dmx-resume") + 1].endswith("dmx-auto-5")
    assert "--dmx-output" not in argv


def test_sweep_with_bad_llm_arguments_fails_before_any_point(
        tiny_folder, text_file, tmp_path, capsys, no_model_loading):
    argv = sweep_argv(tiny_folder, text_file, tmp_path) + ["--dmx-steps", "0"]
    with pytest.raises(SystemExit) as exit_info:
        pareto.main(argv)
    assert exit_info.value.code == 2
    assert "--dmx-steps must be positive" in capsys.readouterr().err


def test_targets_are_required_for_searching_methods(tiny_folder, text_file, tmp_path, capsys):
    with pytest.raises(SystemExit):
        pareto.main(["--model", tiny_folder, "--dataset", text_file, "--output", str(tmp_path)])
    assert "--targets is needed" in capsys.readouterr().err


def test_report_only_rebuilds_table_from_results(finished_sweep, tmp_path):
    (tmp_path / pareto.RESULTS_FILE).write_text((finished_sweep / pareto.RESULTS_FILE).read_text())
    assert pareto.main(
        [
            "--model",
            "m",
            "--dataset",
            "d",
            "--output",
            str(tmp_path),
            "--report-only",
            "--average",
            "simple"
        ]) == 0
    assert "bits (simple)" in (tmp_path / "pareto.md").read_text()
    assert json.loads(
        (tmp_path / pareto.RESULTS_FILE).read_text().splitlines()[0])["label"] == "float"


def test_points_reusing_cached_scores_report_the_scoring_time(finished_sweep):
    records = {
        r["label"]: r for r in pareto.read_results(str(finished_sweep / pareto.RESULTS_FILE))
    }
    first, second = records["fisher-auto-5"], records["fisher-auto-6"]
    assert first["search_time_s"] > 0
    assert second["search_time_s"] == pytest.approx(first["search_time_s"], rel=0.5)


def _retarget_sweep_argv(model, data, out, targets, source):
    return [
        "--model",
        model,
        "--dataset",
        data,
        "--methods",
        "dmx",
        "--targets",
        *targets,
        "--retarget-from",
        source,
        "--output",
        str(out)
    ]


@pytest.fixture(scope="module")
def retarget_sweep(tiny_folder, text_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("retarget")
    argv = _retarget_sweep_argv(tiny_folder, text_file, out, ["5", "6"], "5")
    argv += LLM_ARGS + ["--dmx-steps", "3", "--dmx-batch-size", "2"]
    assert pareto.main(argv) == 0
    return out


def test_retarget_points_reuse_the_learned_offsets(retarget_sweep):
    assert labels(retarget_sweep) == ["dmx-auto-5", "dmx-auto-6", "retarget-auto-6-from-5"]
    records = {r["label"]: r for r in pareto.read_results(str(retarget_sweep / "results.jsonl"))}
    point = records["retarget-auto-6-from-5"]
    assert point["retargeted_from"].endswith("dmx-auto-5")
    assert point["steps"] is None and records["dmx-auto-5"]["steps"] == 3
    assert point["bits"][point["average"]] <= 6
    assert point["retargeted_steps"] == 3
    assert pareto._series(point) == "dmx retargeted from 3 steps (mxfp6-mxfp4)"


def _retarget_argv(model, data, source):
    return [
        "--model",
        model,
        "--dataset",
        data,
        "--dmx",
        "--dmx-target-bits",
        "5",
        "--dmx-retarget-from",
        str(source)
    ]


def test_retarget_to_the_trained_target_gives_the_trained_map(
        retarget_sweep, tiny_folder, text_file, tmp_path):
    source = retarget_sweep / "points" / "dmx-auto-5"
    argv = _retarget_argv(tiny_folder, text_file, source) + [
        "--dmx-output", str(tmp_path / "again"), "--dmx-skip-baselines"
    ] + LLM_ARGS[1:]
    assert llm.main(argv) == 0
    again = json.loads((tmp_path / "again" / "format_map.json").read_text())
    assert again == json.loads((source / "format_map.json").read_text())


def test_retarget_from_a_folder_without_offsets_fails_early(tiny_folder, text_file, tmp_path):
    parser = llm.build_parser()
    args = parser.parse_args(_retarget_argv(tiny_folder, text_file, tmp_path))
    with pytest.raises(llm.UsageError, match="no dmx_offsets.pt there"):
        llm.validate(parser, args)


def test_dmx_runs_of_different_lengths_are_separate_lines():
    record = {"method": "dmx", "ladder": "mxfp8-mxfp4", "steps": 20}
    longer = dict(record, steps=100)
    assert pareto._series(record) != pareto._series(longer)
    assert pareto._series({"method": "kl", "ladder": "mxfp8-mxfp4", "steps": None}) == \
        "kl (mxfp8-mxfp4)"


def _point(method, ppl, nll, fingerprint="abc", target=5.0, seed=0):
    return {
        "seed": seed,
        "label": f"{method}-{target:g}",
        "method": method,
        "model": "m",
        "ladder": "mxfp8-mxfp4",
        "target_bits": target,
        "average": "memory",
        "budget_with_scales": True,
        "seqlen": 16,
        "quant_ppl": ppl,
        "eval_fingerprint": fingerprint,
        "window_nll": nll
    }


def test_paired_comparison_takes_the_better_baseline_of_the_same_windows_and_seed():
    base = [30.0 + i % 7 for i in range(40)]
    records = [
        _point("dmx", 9.0, [v - 0.6 for v in base]),
        _point("kl", 11.0, [v + 0.5 for v in base]),
        _point("fisher", 10.0, base),
        _point("fisher", 1.0, [v - 5 for v in base], fingerprint="other windows"),
        _point("fisher", 1.0, [v - 5 for v in base], target=6.0),
        _point("fisher", 1.0, [v - 5 for v in base], seed=1),
    ]
    (comparison,) = pareto.paired_comparisons(records)
    assert comparison["baseline"] is records[2]
    assert comparison["ratio"] == pytest.approx(math.exp(-0.6 / 15))
    assert comparison["verdict"] == "dMX better"
    assert "| fisher-5 | 10.000 | -3.9 % [-3.9, -3.9] | 40 | dMX better |" in \
        pareto.comparison_table([comparison])


def _with_text(point, text, ppl, nll, fingerprint="text windows"):
    texts = dict(point.get("texts") or {})
    texts[text] = {
        "seqlen": 16,
        "windows": len(nll),
        "fingerprint": fingerprint,
        "float_ppl": 7.0,
        "quant_ppl": ppl,
        "window_nll": nll
    }
    return dict(point, texts=texts)


def test_report_table_has_a_perplexity_column_per_eval_text():
    records = [
        _with_text(_point("dmx", 9.0, [1.0]), "news", 12.5, [1.0]),
        _with_text(_point("fisher", 10.0, [1.0]), "speeches", 14.25, [1.0]),
    ]
    lines = pareto.report_table(records).splitlines()
    header = [cell.strip() for cell in lines[0].split("|")]
    assert header.index("news ppl") + 1 == header.index("speeches ppl")
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")] for line in lines[2:]}
    assert rows["dmx-5"][header.index("news ppl")] == "12.500"
    assert rows["dmx-5"][header.index("speeches ppl")] == "-"
    assert rows["fisher-5"][header.index("speeches ppl")] == "14.250"


def test_paired_comparison_is_made_on_each_eval_text_of_the_same_windows():
    base = [30.0 + i % 7 for i in range(40)]
    dmx = _with_text(_point("dmx", 9.0, base), "news", 9.0, [v + 0.3 for v in base])
    dmx = _with_text(dmx, "speeches", 9.0, base, fingerprint="other windows")
    fisher = _with_text(_point("fisher", 10.0, base), "news", 10.0, base)
    fisher = _with_text(fisher, "speeches", 10.0, base)
    (comparison,) = pareto.paired_comparisons([dmx, fisher])
    assert set(comparison["texts"]) == {"news"}  # speeches: not the same windows
    assert comparison["texts"]["news"]["ratio"] == pytest.approx(math.exp(0.3 / 15))
    assert comparison["texts"]["news"]["verdict"] == "baseline better"
    table = pareto.comparison_table([comparison])
    assert "on news" in table.splitlines()[0]
    assert table.splitlines()[2].endswith("| +2.0 % [+2.0, +2.0] baseline better |")


def test_plot_draws_a_panel_per_eval_text(tmp_path):
    import matplotlib.image
    base = [30.0 + i % 7 for i in range(8)]
    plain = [
        dict(_point(method, ppl, base), bits={pareto.HEADLINE: 5.0})
        for method, ppl in (("dmx", 9.0), ("fisher", 10.0))
    ]
    with_texts = [
        _with_text(_with_text(r, "news", 9.0, base), "speeches", 9.0, base) for r in plain
    ]
    one = matplotlib.image.imread(pareto.plot_pareto(plain, str(tmp_path / "one.png")))
    three = matplotlib.image.imread(pareto.plot_pareto(with_texts, str(tmp_path / "three.png")))
    # 5.2 inches more per panel at 120 dpi
    assert three.shape[1] - one.shape[1] == pytest.approx(2 * 5.2 * 120, abs=2)


def test_points_without_window_nll_are_not_compared():
    records = [_point("dmx", 9.0, None), _point("fisher", 10.0, [1.0, 2.0])]
    assert pareto.paired_comparisons(records) == []


def test_report_compares_dmx_with_the_baselines_on_the_same_windows(
        finished_sweep, retarget_sweep, tmp_path):
    results = tmp_path / pareto.RESULTS_FILE
    results.write_text(
        (finished_sweep / pareto.RESULTS_FILE).read_text()
        + (retarget_sweep / pareto.RESULTS_FILE).read_text())
    records = pareto.read_results(str(results))
    assert all(len(r["window_nll"]) == r["eval_windows"] == 4 for r in records)
    assert pareto.main(
        ["--model", "m", "--dataset", "d", "--output", str(tmp_path), "--report-only"]) == 0
    report = (tmp_path / "pareto.md").read_text()
    assert "Paired comparison" in report
    assert "| dmx-auto-5 | mxfp6-mxfp4 | 5 |" in report
    assert "| fisher-auto-6 |" in report.split("Paired comparison")[1]


def test_sweep_evaluates_the_float_model_once(finished_sweep):
    cache = json.loads((finished_sweep / "float_nll.json").read_text())
    assert len(cache) == 1
    records = pareto.read_results(str(finished_sweep / pareto.RESULTS_FILE))
    assert len({r["float_ppl"] for r in records}) == 1


def test_runs_with_another_seed_are_separate_lines():
    record = {"method": "fisher", "ladder": "mxfp8-mxfp4", "steps": None, "seed": 0}
    assert pareto._series(dict(record, seed=1)) != pareto._series(record)
    assert pareto._series(record) == pareto._series(dict(record, seed=None))


def test_format_maps_are_evaluated_as_points_of_their_own(
        finished_sweep, tiny_folder, text_file, tmp_path):
    fmap = json.loads((finished_sweep / "points" / "fisher-auto-5" / "format_map.json").read_text())
    path = tmp_path / "other-tool-5.json"
    path.write_text(json.dumps(fmap))
    argv = [
        "--model",
        tiny_folder,
        "--dataset",
        text_file,
        "--methods",
        "float",
        "--format-maps",
        str(path),
        "--output",
        str(tmp_path / "sweep")
    ] + LLM_ARGS
    assert pareto.main(argv) == 0
    records = {
        r["label"]: r for r in pareto.read_results(str(tmp_path / "sweep" / "results.jsonl"))
    }
    fisher = {r["label"]: r for r in pareto.read_results(str(finished_sweep / "results.jsonl"))}
    same = fisher["fisher-auto-5"]
    assert records["map-other-tool-5"]["bits"] == same["bits"]
    assert records["map-other-tool-5"]["quant_ppl"] == pytest.approx(same["quant_ppl"], rel=1e-6)


def test_format_maps_named_by_target_draw_one_line_per_tool():
    records = [{"method": f"map:/maps/modelopt-gradient-{t}.json"} for t in ("5", "5.5", "7")]
    assert {pareto._series(r) for r in records} == {"modelopt-gradient"}


def test_retarget_points_of_an_auto_sweep_name_the_source_ladder(tiny_folder, text_file, tmp_path):
    argv = _retarget_sweep_argv(tiny_folder, text_file, tmp_path, ["6", "8"], "8")
    args = pareto.build_parser().parse_args(argv)
    point = dict(pareto.plan_points(args, []))["retarget-auto-6-from-8"]
    # the segment around 8 bits, where the offsets learn; 6 bits alone would pick e2m1,e2m3
    assert point[point.index("--dmx-ladder") + 1] == "e2m3,e4m3"


def test_retarget_points_count_the_budget_as_the_source_run_does(tiny_folder, text_file, tmp_path):
    argv = _retarget_sweep_argv(tiny_folder, text_file, tmp_path, ["5", "6.1"], "6.1")
    args = pareto.build_parser().parse_args(argv)
    # 6.1 bits of elements alone is past E2M3's 6; with the scales' 0.25 it is not
    for llm_argv, chosen in ((["--no-dmx-budget-with-scales"], "e2m3,e4m3"), ([], "mxfp6-mxfp4")):
        point = dict(pareto.plan_points(args, llm_argv))["retarget-auto-5-from-6.1"]
        assert point[point.index("--dmx-ladder") + 1] == chosen
