# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""A straightforward autograd formulation of the learnable MX quantizer, as a test oracle for
the memory-saving custom backward of ``brevitas_dmx.functional``."""

import torch


def _round_ste(x):
    return x + (torch.round(x) - x).detach()


def _ceil_ste(x):
    return x + (torch.ceil(x) - x).detach()


def _floor_ste(x):
    return x + (torch.floor(x) - x).detach()


def reference_quantize_blocks(blocks, e, m, scale_rule="floor"):
    bias = torch.exp2(e - 1) - 1
    emax = torch.exp2(e - 1) - torch.clamp(e - 4, 0, 1)
    nan_code = torch.clamp(1 - torch.abs(e - 4), 0, 1)
    max_normal = (2 - (1 + nan_code) * torch.exp2(-m)) * torch.exp2(emax)
    amax = blocks.detach().abs().amax(dim=-1, keepdim=True).clamp_min(1e-10)
    if scale_rule == "floor":
        k = torch.floor(torch.log2(amax)) - emax
    elif scale_rule == "even":
        k = _floor_ste(torch.log2(amax) - torch.log2(1 - torch.exp2(-(m + 2)))) - emax
    else:
        k = _ceil_ste(torch.log2(amax / max_normal))
    scale = torch.exp2(k)
    y = blocks / scale
    binade = torch.floor(torch.log2(y.detach().abs() + torch.finfo(y.dtype).tiny))
    # 2**(max(binade, 1 - bias) - m), as a power of two times 2**-m (the package's rounding)
    step = torch.maximum(torch.exp2(binade), torch.exp2(1 - bias)) * torch.exp2(-m)
    q = step * _round_ste(y / step)
    q = torch.where(q > max_normal, max_normal, q)
    q = torch.where(q < -max_normal, -max_normal, q)
    return q * scale
