# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Per-window NLL, perplexity from it, and the paired bootstrap comparison of two models."""

import math

import pytest
import torch

from brevitas_dmx.evaluate import paired_ratio
from brevitas_dmx.evaluate import perplexity
from brevitas_dmx.evaluate import window_nll
from brevitas_dmx.evaluate import windows_fingerprint
from tests.conftest import tiny_llama

SEQLEN = 16


@pytest.fixture(scope="module")
def model_and_windows():
    model = tiny_llama()
    windows = torch.randint(
        model.config.vocab_size, (10, SEQLEN), generator=torch.Generator().manual_seed(0))
    return model, windows


def test_window_nll_matches_a_per_window_reference(model_and_windows):
    model, windows = model_and_windows
    nll = window_nll(model, windows, batch_size=4)  # batches of 4, 4 and 2 windows
    with torch.no_grad():
        for index, window in enumerate(windows):
            logits = model(input_ids=window[None]).logits[0]
            expected = torch.nn.functional.cross_entropy(logits[:-1], window[1:], reduction="sum")
            assert float(nll[index]) == pytest.approx(float(expected), rel=1e-5)


def test_perplexity_is_exp_of_mean_token_nll(model_and_windows):
    model, windows = model_and_windows
    nll = window_nll(model, windows, batch_size=3)
    expected = math.exp(float(nll.sum()) / (len(windows) * (SEQLEN - 1)))
    assert perplexity(model, windows, batch_size=3) == pytest.approx(expected, rel=1e-12)


def test_window_nll_leaves_windows_outside_starts_at_zero(model_and_windows):
    model, windows = model_and_windows
    full = window_nll(model, windows, batch_size=4)
    part = window_nll(model, windows, batch_size=4, starts=[4])
    assert torch.equal(part[4:8], full[4:8])
    assert not part[:4].any() and not part[8:].any()


def test_fingerprint_tells_different_windows_apart(model_and_windows):
    _, windows = model_and_windows
    changed = windows.clone()
    changed[3, 5] += 1
    assert windows_fingerprint(windows) == windows_fingerprint(windows.clone())
    assert windows_fingerprint(windows) != windows_fingerprint(changed)


def test_paired_ratio_of_a_uniform_shift_is_exact_with_a_point_interval():
    base = torch.linspace(20.0, 40.0, 50, dtype=torch.float64)
    shifted = base + 1.5  # 1.5 nats more on every window of 16 tokens (15 predictions)
    stats = paired_ratio(shifted, base, SEQLEN)
    assert stats["ratio"] == pytest.approx(math.exp(1.5 / 15), rel=1e-12)
    assert stats["low"] == pytest.approx(stats["ratio"], rel=1e-12)
    assert stats["high"] == pytest.approx(stats["ratio"], rel=1e-12)


def test_paired_ratio_cancels_what_the_windows_share():
    # Windows differ a lot in difficulty (the spread an unpaired comparison would see); the
    # models differ by a small, noisy amount: the interval is set by the difference only.
    generator = torch.Generator().manual_seed(0)
    difficulty = 30 * torch.rand(400, generator=generator, dtype=torch.float64)
    a = difficulty + 0.3 + 0.1 * torch.randn(400, generator=generator, dtype=torch.float64)
    stats = paired_ratio(a, difficulty, SEQLEN)
    assert 1 < stats["low"] < stats["ratio"] < stats["high"]
    assert math.log(stats["high"] / stats["low"]) < 0.002


def test_paired_ratio_does_not_separate_zero_mean_noise():
    generator = torch.Generator().manual_seed(1)
    base = 30 + torch.rand(200, generator=generator, dtype=torch.float64)
    noisy = base + torch.randn(200, generator=generator, dtype=torch.float64)
    noisy -= (noisy - base).mean()  # exactly zero mean difference
    stats = paired_ratio(noisy, base, SEQLEN)
    assert stats["low"] < 1 < stats["high"]


def test_paired_ratio_is_deterministic_for_a_seed():
    generator = torch.Generator().manual_seed(2)
    a, b = torch.rand(64, generator=generator), torch.rand(64, generator=generator)
    assert paired_ratio(a, b, SEQLEN, seed=3) == paired_ratio(a, b, SEQLEN, seed=3)


def test_paired_ratio_refuses_windows_that_do_not_pair():
    with pytest.raises(ValueError, match="same windows"):
        paired_ratio(torch.ones(8), torch.ones(9), SEQLEN)
