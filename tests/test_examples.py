# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The examples keep working."""

import importlib.util
import os

import pytest
import yaml

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "examples")


def test_by_hand_example_gives_the_heavy_tailed_layer_mxfp8():
    spec = importlib.util.spec_from_file_location(
        "learn_formats_by_hand", os.path.join(EXAMPLES, "learn_formats_by_hand.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fmap = module.main(steps=120)
    assert fmap["2"]["weight"] == "e4m3" and fmap["0"]["weight"] == "e2m1"


@pytest.mark.parametrize("name", ["smollm2_6bit.yml", "short_search_cpu.yml"])
def test_yaml_example_names_only_known_flags(name):
    from brevitas_dmx.llm import build_parser
    dests = {action.dest for action in build_parser()._actions}
    with open(os.path.join(EXAMPLES, name)) as f:
        config = yaml.safe_load(f)
    assert set(config) <= dests


def _readme_quick_start() -> str:
    """The Python block under the README's "Quick start" heading."""
    import re
    with open(os.path.join(os.path.dirname(__file__), os.pardir, "README.md")) as f:
        readme = f.read()
    section = readme.split("## Quick start", 1)[1]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def test_readme_quick_start_prints_formats_bits_and_the_finalized_quantizer(capsys):
    exec(compile(_readme_quick_start(), "README.md quick start", "exec"), {})
    out = capsys.readouterr().out
    assert "deploys as e2m1" in out and "deploys as e4m3" in out
    assert "finalized to MXFloat8e4m3Weight: 8.25 bits per weight" in out


def test_short_search_config_sets_the_recipe_and_a_flag_overrides_it():
    from brevitas_dmx.llm.main import parse
    config = os.path.join(EXAMPLES, "short_search_cpu.yml")
    _, args, _, _ = parse(["--config", config, "--model", "m", "--dmx-steps", "20"])
    assert (args.dmx, args.seqlen, args.dmx_momentum, args.dmx_lr) == (True, 512, 0.95, 5.0)
    assert args.dmx_compile and args.dmx_steps == 20
