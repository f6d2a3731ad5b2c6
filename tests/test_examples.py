# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The examples keep working."""

import importlib.util
import os

import yaml

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "examples")


def test_by_hand_example_gives_the_heavy_tailed_layer_mxfp8():
    spec = importlib.util.spec_from_file_location(
        "learn_formats_by_hand", os.path.join(EXAMPLES, "learn_formats_by_hand.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fmap = module.main(steps=120)
    assert fmap["2"]["weight"] == "e4m3" and fmap["0"]["weight"] == "e2m1"


def test_yaml_example_names_only_known_flags():
    from brevitas_dmx.llm import build_parser
    dests = {action.dest for action in build_parser()._actions}
    with open(os.path.join(EXAMPLES, "smollm2_6bit.yml")) as f:
        config = yaml.safe_load(f)
    assert set(config) <= dests
