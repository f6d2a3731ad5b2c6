# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The peer mixed-precision MX searchers in this project's protocol: same model, calibration
windows, formats and budget as ``brevitas_dmx_llm``; their choices written as format maps.

Peers (each optional: ``pip install brevitas-dmx[peers]``); ``--formats`` picks the candidate
formats, MXFP4 (e2m1) and MXFP8 (e4m3) by default, W+A as this project's default dMX run:

- ``modelopt-gradient``, ``modelopt-kl_div``: NVIDIA ModelOpt ``mtq.auto_quantize``. Gradient
  scores a layer in a format by sum(g^2 (Y - Y_q)^2) at its output (g the loss gradient) and
  solves a knapsack; kl_div scores by the KL divergence of the logits with one layer group
  quantized and binary-searches a score threshold. q/k/v and gate/up are forced to one format.
  Candidates: ModelOpt's MX presets (MXFP4_DEFAULT_CFG e2m1, MXFP6_DEFAULT_CFG e3m2,
  MXFP8_DEFAULT_CFG e4m3; e2m3 has no ModelOpt preset and is given as the MXFP6 preset with
  num_bits (2, 3)). "Do not quantize" is kept as ModelOpt's cost baseline but may not be chosen
  (every layer ends in an MX format, as in this project's maps). ModelOpt counts effective bits
  WITHOUT the E8M0 scales (MXFP4 = 4, MXFP8 = 8), so it is given the budget minus 0.25. It scores
  once; each target is then solved from the same scores (``get_auto_quantize_config``).
  ModelOpt's MX fake quantization is a CUDA extension; on a CPU this script registers a torch
  port of that kernel through ModelOpt's public ``register_quant_backend``. The port keeps
  ModelOpt's shared-scale rule, 2^ceil(log2(amax / max_element)) clamped to [-127, 127]
  (OCP's rule is floor(log2(amax)) - emax), round-to-nearest-even on the element grid, E4M3
  saturating, and a straight-through gradient.
- ``autoround``: Intel auto-round ``AutoScheme`` (method "default": DeltaLoss sensitivities of
  SignRoundV2, a DP over layers); its MX options are MXFP4 (e2m1), MXFP6 (e2m3) and MXFP8
  (e4m3). It does not tie q/k/v or gate/up.
  Its ``avg_bits`` counts the 8-bit E8M0 scale of every 32 weights (MXFP4 = 4.25), as this
  project does, so it gets the budget unchanged (checked at run time with its own
  ``compute_layer_bits``). Its calibration loader is replaced by this project's windows.

Every search is given this project's calibration windows (``brevitas_dmx.data``: the first 60 %
of the text, ``--nsamples`` windows of ``--seqlen`` tokens in the seeded order), and the LM head
stays float. For each peer and target it writes ``OUT/maps/<peer>-<target>.json`` (``{layer:
format}``, evaluate with ``brevitas_dmx_llm --dmx-format-map FILE``), one line of
``OUT/peers.jsonl`` (map, search time, the peer's claimed average, this project's memory bits with
scales, layers per format) and the table ``OUT/peers.md``.

    OMP_NUM_THREADS=1 python benchmarks/peers.py --model smollm2-135m \\
        --dataset enwiki-gensim --targets 5 5.5 6 7 \\
        --seqlen 128 --nsamples 64 --output runs/peers
"""

import argparse
import copy
import importlib
import importlib.metadata
import json
import logging
import math
import os
import random
import sys
import time
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn
from tqdm import tqdm

from brevitas_dmx.formats import E8M0_SCALE_BITS
from brevitas_dmx.formats import element_format

logger = logging.getLogger("peers")

BLOCK_SIZE = 32
PEERS = ("modelopt-gradient", "modelopt-kl_div", "autoround")
DEFAULT_FORMATS = "e2m1,e4m3"
INSTALL_HINT = "pip install brevitas-dmx[peers]"
# The name ModelOpt's quantizers select the torch port of its MX kernel by.
MODELOPT_BACKEND = "brevitas_dmx_mx_cpu"
# ModelOpt's MX presets by element format (e2m3 has none: built from the MXFP6 preset).
MODELOPT_PRESETS = {
    "e2m1": "MXFP4_DEFAULT_CFG", "e3m2": "MXFP6_DEFAULT_CFG", "e4m3": "MXFP8_DEFAULT_CFG"
}
# auto-round's MX schemes by element format ("mx_fp" with 6 bits is e2m3 there).
AUTOROUND_SCHEMES = {"e2m1": "MXFP4", "e2m3": "MXFP6", "e4m3": "MXFP8"}
# auto-round's (data_type, bits) of a layer scheme -> element format.
AUTOROUND_DATA_TYPES = {
    ("mx_fp", 4): "e2m1",
    ("mx_fp4", 4): "e2m1",
    ("mx_fp4e2m1", 4): "e2m1",
    ("mx_fp", 6): "e2m3",
    ("mx_fp6", 6): "e2m3",
    ("mx_fp6e2m3", 6): "e2m3",
    ("mx_fp6e3m2", 6): "e3m2",
    ("mx_fp", 8): "e4m3",
    ("mx_fp8", 8): "e4m3",
    ("mx_fp8e4m3", 8): "e4m3",
}


class PeerMissing(RuntimeError):
    """A peer's package is not installed."""


def require(module: str, package: str, peer: str):
    """Imports a peer's module, or raises ``PeerMissing`` saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise PeerMissing(
            f"peer {peer!r} needs the {package} package ({err}): {INSTALL_HINT} "
            f"(or pip install {package})") from err


def package_version(package: str) -> Optional[str]:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------------------------
# Bits: this project's count and the peers' conventions
# ---------------------------------------------------------------------------------------------


def modelopt_budget(target_bits: float) -> float:
    """ModelOpt's ``effective_bits`` for a budget in memory bits per weight with the E8M0 scales:
    ModelOpt counts element bits only, so one 8-bit scale per 32 weights less."""
    return target_bits - E8M0_SCALE_BITS / BLOCK_SIZE


def autoround_budget(target_bits: float, counts_scales: bool = True) -> float:
    """auto-round's ``avg_bits`` for a budget with scales: unchanged where it counts them (its
    default, ``ignore_scale_zp_bits=False``), else the element bits."""
    return target_bits if counts_scales else target_bits - E8M0_SCALE_BITS / BLOCK_SIZE


def quantized_linears(model: nn.Module, skip: Sequence[str] = ("lm_head",)) -> Dict[str, nn.Linear]:
    """The Linear layers a map covers: every ``nn.Linear`` but the LM head, by module name."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.split(".")[-1] not in skip
    }


def layer_memory_bits(module: nn.Linear, fmt: str, with_scales: bool = True) -> int:
    """Bits of a Linear weight in an MX format: elements plus one E8M0 scale per block of 32
    along the input dimension (a ragged last block has its own scale)."""
    out_features, in_features = module.weight.shape
    bits = element_format(fmt).bits * out_features * in_features
    if with_scales:
        bits += E8M0_SCALE_BITS * out_features * math.ceil(in_features / BLOCK_SIZE)
    return bits


def map_bits(
        layers: Mapping[str, nn.Linear],
        fmap: Mapping[str, str],
        with_scales: bool = True) -> float:
    """Average bits per weight of a map over the quantized Linear weights, weighted by numel
    (with scales: this project's ``memory_with_scales``). Every layer must be in the map."""
    missing = sorted(set(layers) - set(fmap))
    extra = sorted(set(fmap) - set(layers))
    if missing or extra:
        raise ValueError(f"map does not match the model: missing {missing}, unknown {extra}")
    total = sum(layers[n].weight.numel() for n in layers)
    bits = sum(layer_memory_bits(layers[n], fmap[n], with_scales) for n in layers)
    return bits / total


def layer_shapes(model: nn.Module) -> Dict[str, nn.Linear]:
    """Weightless (meta) copies of the quantized Linear layers, for counting bits after a peer
    has replaced or wrapped the model's own."""
    return {
        name: nn.Linear(module.in_features, module.out_features, bias=False, device="meta")
        for name, module in quantized_linears(model).items()
    }


def format_counts(fmap: Mapping[str, str]) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for fmt in fmap.values():
        counts[fmt] = counts.get(fmt, 0) + 1
    return dict(sorted(counts.items()))


def write_map(path: str, fmap: Mapping[str, str]) -> None:
    """Writes a format map (checked with ``brevitas_dmx.model.check_format_map``)."""
    from brevitas_dmx.model import check_format_map
    check_format_map(dict(fmap))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(dict(fmap), f, indent=1)
        f.write("\n")


# ---------------------------------------------------------------------------------------------
# A torch port of ModelOpt's MX fake quantization (its CUDA kernel fused_amax_convert)
# ---------------------------------------------------------------------------------------------


def element_grid(fmt: str) -> torch.Tensor:
    """The non-negative values of an OCP element format without inf/NaN codes (E2M1, E2M3,
    E3M2), ascending, from its exponent and mantissa widths."""
    spec = element_format(fmt)
    e_bits, m_bits = spec.exponent_bits, spec.mantissa_bits
    bias = 2**(e_bits - 1) - 1
    values = [m / 2**m_bits * 2.0**(1 - bias) for m in range(2**m_bits)]  # zero and subnormals
    for e in range(1, 2**e_bits):
        values += [(1 + m / 2**m_bits) * 2.0**(e - bias) for m in range(2**m_bits)]
    return torch.tensor(values, dtype=torch.float32)


def element_max(fmt: str) -> float:
    if fmt == "e4m3":
        return 448.0
    return float(element_grid(fmt)[-1])


def modelopt_scale_exponent(amax: torch.Tensor, fmt: str) -> torch.Tensor:
    """ModelOpt's shared exponent: ceil(log2(amax / max_element)) of the float32 ratio, clamped
    to [-127, 127]; 0 (scale 1) for a zero or non-finite amax. OCP's is floor(log2(amax)) minus
    the element's largest exponent."""
    ratio = amax.float() / element_max(fmt)
    mantissa, exponent = torch.frexp(ratio)  # ratio = mantissa * 2^exponent, mantissa in [.5, 1)
    ceil_log2 = exponent - (mantissa == 0.5).to(exponent.dtype)
    valid = (amax > 0) & torch.isfinite(amax)
    return torch.where(valid, ceil_log2.clamp(-127, 127), torch.zeros_like(ceil_log2))


def round_to_grid(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """ModelOpt's table rounding: nearest grid value, a tie to the even grid index; magnitudes
    above the grid saturate; the sign is kept."""
    magnitude = x.abs()
    bounds = (grid[1:] + grid[:-1]) / 2
    index = torch.searchsorted(bounds, magnitude.contiguous(), right=False)
    tie = (index < len(bounds)) & (bounds[index.clamp(max=len(bounds) - 1)] == magnitude)
    index = torch.where(tie & (index % 2 == 1), index + 1, index)
    index = torch.where(torch.isfinite(magnitude), index, torch.full_like(index, len(grid) - 1))
    return torch.copysign(grid[index], x)


def modelopt_mx_quantize(x: torch.Tensor, fmt: str, block_size: int = BLOCK_SIZE) -> torch.Tensor:
    """Quantize-dequantize ``x`` as ModelOpt's MX kernel does, in blocks of ``block_size`` along
    the last dimension (zero-padded), computed in float32 and returned in ``x``'s dtype."""
    shape, dtype = x.shape, x.dtype
    flat = x.detach().float().reshape(-1, shape[-1])
    pad = (-shape[-1]) % block_size
    if pad:
        flat = nn.functional.pad(flat, (0, pad))
    blocks = flat.view(flat.shape[0], -1, block_size)
    exponent = modelopt_scale_exponent(blocks.abs().amax(dim=-1, keepdim=True), fmt)
    one = torch.ones(exponent.shape, dtype=torch.float32)
    scaled = blocks * torch.ldexp(one, -exponent)
    if fmt == "e4m3":
        limit = element_max(fmt)
        elements = scaled.clamp(-limit, limit).to(torch.float8_e4m3fn).float()
    else:
        elements = round_to_grid(scaled, element_grid(fmt))
    out = (elements * torch.ldexp(one, exponent)).view(flat.shape)[:, :shape[-1]]
    return out.reshape(shape).to(dtype)


class _ModelOptMXFakeQuant(torch.autograd.Function):
    """ModelOpt's MX fake quantization with its straight-through gradient (MX quantizers keep no
    amax, so its backward passes the gradient unchanged)."""

    @staticmethod
    def forward(ctx, x, fmt, block_size):
        return modelopt_mx_quantize(x, fmt, block_size)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


def modelopt_backend(inputs: torch.Tensor, quantizer) -> torch.Tensor:
    """ModelOpt quantization backend (``register_quant_backend``): the port above, for the
    quantizer's element format and block size."""
    num_bits = tuple(quantizer.num_bits)
    fmt = {(2, 1): "e2m1", (2, 3): "e2m3", (3, 2): "e3m2", (4, 3): "e4m3"}.get(num_bits)
    if fmt is None:
        raise ValueError(f"the CPU MX backend has no element format E{num_bits[0]}M{num_bits[1]}")
    block_size = quantizer.block_sizes.get(-1) or quantizer.block_sizes.get(inputs.dim() - 1)
    return _ModelOptMXFakeQuant.apply(inputs, fmt, block_size)


# ---------------------------------------------------------------------------------------------
# Data and models, through the package's own loaders
# ---------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def load_calibration(args) -> Tuple[object, List[Dict]]:
    """The tokenizer and the calibration windows ``brevitas_dmx_llm`` uses for these flags."""
    from brevitas_dmx.data import calibration_samples
    from brevitas_dmx.data import load_text
    from brevitas_dmx.data import split_text
    from brevitas_dmx.loading import load_tokenizer
    tokenizer = load_tokenizer(args.model)
    calib_text, _ = split_text(load_text(args.dataset), args.eval_fraction)
    samples = calibration_samples(tokenizer, calib_text, args.nsamples, args.seqlen, args.seed)
    return tokenizer, samples


def batches(samples: List[Dict], batch_size: int) -> List[Dict[str, torch.Tensor]]:
    return [
        {
            key: torch.stack([s[key]
                              for s in samples[i:i + batch_size]])
            for key in ("input_ids", "attention_mask", "labels")
        }
        for i in range(0, len(samples), batch_size)
    ]


def load_model(args) -> nn.Module:
    from brevitas_dmx.loading import load_model as package_load_model
    return package_load_model(args.model, args.dtype)


# ---------------------------------------------------------------------------------------------
# Peers
# ---------------------------------------------------------------------------------------------


class SearchResult:
    """One peer's maps for every target: ``maps[target]``, the peer's own average for each,
    what it was given, and the times."""

    def __init__(self):
        self.maps: Dict[float, Dict[str, str]] = {}
        self.claims: Dict[float, float] = {}
        self.peer_budgets: Dict[float, float] = {}
        self.solve_times: Dict[float, float] = {}
        self.score_time = 0.0
        self.score_windows: Optional[int] = None  # None: all calibration windows
        self.notes: List[str] = []


def _modelopt_candidates(mtq, formats: Sequence[str]) -> List[Tuple[str, dict]]:
    """(format, config) for each candidate: ModelOpt's MX preset, its quantizers on the CPU
    backend (e2m3: the MXFP6 preset with num_bits (2, 3))."""
    candidates = []
    for fmt in formats:
        if fmt not in MODELOPT_PRESETS and fmt != "e2m3":
            raise ValueError(f"ModelOpt has no MX configuration for {fmt}")
        preset = copy.deepcopy(getattr(mtq, MODELOPT_PRESETS.get(fmt, "MXFP6_DEFAULT_CFG")))
        for entry in preset["quant_cfg"]:
            cfg = entry.get("cfg") if isinstance(entry, dict) else None
            if isinstance(cfg, dict) and cfg.get("block_sizes",
                                                 {}).get("scale_bits") in ((8, 0), "e8m0"):
                if fmt == "e2m3":
                    cfg["num_bits"] = (2, 3)
                cfg["backend"] = MODELOPT_BACKEND
        candidates.append((fmt, preset))
    return candidates


def _modelopt_map(config: dict, layers: Iterable[str]) -> Dict[str, Optional[str]]:
    """Each layer's weight format in a config from ``get_auto_quantize_config`` (None: float)."""
    by_bits = {(2, 1): "e2m1", (2, 3): "e2m3", (3, 2): "e3m2", (4, 3): "e4m3"}
    chosen: Dict[str, Optional[str]] = {name: None for name in layers}
    for entry in config["quant_cfg"]:
        name = entry.get("quantizer_name", "")
        if not name.endswith(".weight_quantizer"):
            continue
        layer = name[:-len(".weight_quantizer")]
        if layer not in chosen:
            continue
        cfg = entry.get("cfg") or {}
        if entry.get("enable", True) is False or "num_bits" not in cfg:
            chosen[layer] = None
            continue
        chosen[layer] = by_bits[tuple(cfg["num_bits"])]
    return chosen


def _modelopt_constraints(effective_bits: float) -> dict:
    """ModelOpt's constraints for a budget in its convention. The LM head is neither searched
    nor counted: ModelOpt counts a disabled layer at 16 bits unless its cost is excluded."""
    return {
        "effective_bits": effective_bits,
        "cost": {
            "excluded_module_name_patterns": ["*lm_head*"]
        },
    }


def modelopt_element_bits(layers: Mapping[str, nn.Linear], fmap: Mapping[str, str]) -> float:
    """ModelOpt's own count of a map: parameter-weighted element bits, no scales."""
    return map_bits(layers, fmap, with_scales=False)


def run_modelopt(
        method: str, model: nn.Module, samples: List[Dict], targets: Sequence[float],
        args) -> SearchResult:
    mtq = require("modelopt.torch.quantization", "nvidia-modelopt", f"modelopt-{method}")
    from modelopt.torch.quantization.nn import register_quant_backend
    register_quant_backend(MODELOPT_BACKEND, modelopt_backend)
    formats = args.formats
    candidates = _modelopt_candidates(mtq, formats)
    configs = [cfg for _, cfg in candidates]
    layers = quantized_linears(model)
    data = batches(samples, args.batch_size)
    score_batches = min(args.modelopt_score_batches or len(data), len(data))
    result = SearchResult()

    def forward_step(model, batch):
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"] if method == "gradient" else None)
        return out if method == "gradient" else out.logits

    def loss_func(output, batch):
        return output.loss

    first = modelopt_budget(max(targets))
    started = time.perf_counter()
    model, state = mtq.auto_quantize(
        model,
        constraints=_modelopt_constraints(first),
        quantization_formats=configs,
        module_search_spaces=[{
            "module_name_patterns": ["*"], "quantization_formats": configs,
            "allow_no_quant": False}],
        data_loader=data,
        forward_step=forward_step,
        loss_func=loss_func if method == "gradient" else None,
        disabled_layers=["*lm_head*"],
        num_calib_steps=len(data),
        num_score_steps=score_batches,
        method=method,
        verbose=args.verbose)
    result.score_time = time.perf_counter() - started
    result.score_windows = min(score_batches * args.batch_size, len(samples))
    reported = state.get("best", {}).get("constraints", {}).get("effective_bits")
    if reported is not None:
        result.notes.append(f"ModelOpt reported {reported:.4f} effective bits at {first:g}")
    for target in targets:
        budget = modelopt_budget(target)
        start = time.perf_counter()
        config = mtq.get_auto_quantize_config(state, _modelopt_constraints(budget))
        result.solve_times[target] = time.perf_counter() - start
        chosen = _modelopt_map(config, layers)
        floats = sorted(name for name, fmt in chosen.items() if fmt is None)
        if floats:
            raise RuntimeError(f"ModelOpt left layers unquantized at {target}: {floats}")
        result.maps[target] = dict(chosen)
        result.peer_budgets[target] = budget
        result.claims[target] = modelopt_element_bits(layers, result.maps[target])
        if result.claims[target] < budget - 0.1:
            # Seen on tiny models: CBC stops at a poor integer solution when every score is
            # around 1e-7 (the same scores times 1e6 fill the budget).
            note = (
                f"ModelOpt's solution at {target:g} uses {result.claims[target]:.3f} of its "
                f"{budget:.3f} bits")
            logger.warning(note)
            result.notes.append(note)
    result.notes.append(
        f"calibration on {len(data)} batches of {args.batch_size} windows, scores on the first "
        f"{score_batches}; every target solved from these scores; ModelOpt's MX kernel replaced "
        f"by the torch port (ceil scale rule)")
    return result


def _autoround_format(entry: Mapping) -> str:
    """This project's format name for an auto-round layer scheme."""
    key = (str(entry.get("data_type")), int(entry.get("bits", 16)))
    if key not in AUTOROUND_DATA_TYPES:
        raise ValueError(f"auto-round chose a scheme that is no MX format here: {entry}")
    return AUTOROUND_DATA_TYPES[key]


def autoround_layer_bits(module: nn.Linear, entry: Mapping) -> float:
    """auto-round's own count of a layer's bits (``compute_layer_bits``, scales counted)."""
    from auto_round.auto_scheme.utils import compute_layer_bits
    probe = nn.Linear(module.in_features, module.out_features, bias=False, device="meta")
    for key in ("bits", "group_size", "sym", "data_type", "super_bits", "super_group_size"):
        if key in entry:
            setattr(probe, key, entry[key])
    return compute_layer_bits(probe)[0]


def _autoround_counts_scales() -> bool:
    """Whether auto-round's average counts the E8M0 scales: its bits of an MXFP4 layer."""
    from auto_round.schemes import MXFP4
    probe = nn.Linear(64, 64, bias=False, device="meta")
    bits = autoround_layer_bits(probe, vars(MXFP4)) / probe.weight.numel()
    return abs(bits - (4 + E8M0_SCALE_BITS / BLOCK_SIZE)) < 1e-9


def run_autoround(model, tokenizer, samples, targets, args) -> SearchResult:
    require("auto_round", "auto-round", "autoround")
    import tempfile
    cache = tempfile.mkdtemp(prefix="autoround-scores-")
    # Its per-scheme score cache: fresh for this run, so the first target pays the scoring and
    # the later ones reuse it (scores do not depend on the budget).
    os.environ["AR_AUTO_SCHEME_CACHE"] = cache
    from auto_round import AutoRound
    from auto_round import AutoScheme
    import auto_round.auto_scheme.delta_loss as delta_loss
    unknown = [f for f in args.formats if f not in AUTOROUND_SCHEMES]
    if unknown:
        raise ValueError(f"auto-round has no MX scheme for {unknown}")
    options = tuple(AUTOROUND_SCHEMES[f] for f in args.formats)
    data = batches(samples, args.batch_size)

    def our_windows(tokenizer, seqlen, dataset_name=None, seed=42, bs=8, nsamples=512):
        return [{key: batch[key] for key in ("input_ids", "attention_mask")} for batch in data]

    delta_loss.get_dataloader = our_windows  # its calibration: this project's windows
    counts_scales = _autoround_counts_scales()
    result = SearchResult()
    shapes = layer_shapes(model)
    for i, target in enumerate(tqdm(targets, desc="autoround targets", unit="target")):
        if i:
            seed_everything(args.seed)
            model = load_model(args)  # auto-round offloads (clears) the weights it has scored
        budget = autoround_budget(target, counts_scales)
        scheme = AutoScheme(
            avg_bits=budget,
            options=options,
            nsamples=args.nsamples,
            seqlen=args.seqlen,
            batch_size=args.batch_size,
            device_map="cpu",
            enable_torch_compile=False)
        start = time.perf_counter()
        compressor = AutoRound(
            model,
            tokenizer,
            scheme=scheme,
            iters=0,
            nsamples=args.nsamples,
            seqlen=args.seqlen,
            batch_size=args.batch_size,
            device_map="cpu",
            dataset="brevitas-dmx-calibration")
        compressor.configure_layer_config()
        elapsed = time.perf_counter() - start
        if i == 0:
            result.score_time, result.solve_times[target] = elapsed, 0.0
        else:
            result.solve_times[target] = elapsed
        config = compressor.layer_config
        fmap = {name: _autoround_format(config[name]) for name in shapes}
        result.maps[target] = fmap
        result.peer_budgets[target] = budget
        result.claims[target] = sum(
            autoround_layer_bits(shapes[n], config[n]) for n in shapes) / sum(
                shapes[n].weight.numel() for n in shapes)
        del compressor
    result.notes.append(
        f"options {options}; scores computed for the first target and reused from its cache "
        f"for the others (the first target's solve is inside the scoring time); its "
        f"calibration loader replaced by this project's windows")
    return result


PEER_RUNNERS: Dict[str, Callable] = {
    "modelopt-gradient": lambda model, tokenizer, *rest: run_modelopt("gradient", model, *rest),
    "modelopt-kl_div": lambda model, tokenizer, *rest: run_modelopt("kl_div", model, *rest),
    "autoround": run_autoround,
}
PEER_PACKAGES = {
    "modelopt-gradient": ("modelopt.torch.quantization", "nvidia-modelopt"),
    "modelopt-kl_div": ("modelopt.torch.quantization", "nvidia-modelopt"),
    "autoround": ("auto_round", "auto-round"),
}
PEER_CONVENTIONS = {
    "modelopt-gradient": "element bits, no scales",
    "modelopt-kl_div": "element bits, no scales",
    "autoround": "bits with the E8M0 scales",
}

# The element formats each peer can search over.
PEER_FORMATS = {
    "modelopt-gradient": ("e2m1", "e2m3", "e3m2", "e4m3"),
    "modelopt-kl_div": ("e2m1", "e2m3", "e3m2", "e4m3"),
    "autoround": tuple(AUTOROUND_SCHEMES),
}


def check_peers(peers: Sequence[str], formats: Sequence[str] = ()) -> None:
    """Fails before any model is loaded if a peer's package is missing or it cannot search one
    of the formats."""
    for peer in peers:
        unknown = [f for f in formats if f not in PEER_FORMATS[peer]]
        if unknown:
            raise ValueError(
                f"{peer} has no MX configuration for {', '.join(unknown)} (it takes "
                f"{', '.join(PEER_FORMATS[peer])})")
    for peer in peers:
        module, package = PEER_PACKAGES[peer]
        require(module, package, peer)


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def target_label(target: float) -> str:
    return f"{target:g}"


def record(
        peer: str,
        target: float,
        result: SearchResult,
        layers: Mapping[str, nn.Linear],
        map_path: str,
        args) -> Dict:
    fmap = result.maps[target]
    ours = map_bits(layers, fmap, with_scales=True)
    return {
        "peer": peer,
        "package": PEER_PACKAGES[peer][1],
        "version": package_version(PEER_PACKAGES[peer][1]),
        "model": args.model,
        "dataset": args.dataset,
        "seqlen": args.seqlen,
        "nsamples": args.nsamples,
        "batch_size": args.batch_size,
        "score_windows": result.score_windows or args.nsamples,
        "seed": args.seed,
        "formats": list(args.formats),
        "target_bits": target,
        "peer_budget": result.peer_budgets[target],
        "peer_convention": PEER_CONVENTIONS[peer],
        "peer_claimed_bits": result.claims[target],
        "memory_with_scales": ours,
        "element_bits": map_bits(layers, fmap, with_scales=False),
        "within_budget": ours <= target + 1e-9,
        "format_counts": format_counts(fmap),
        "layers": len(fmap),
        "score_time_s": result.score_time,
        "solve_time_s": result.solve_times[target],
        "search_time_s": result.score_time + result.solve_times[target],
        "map": map_path,
        "notes": result.notes,
    }


def write_table(rows: Sequence[Dict], path: str) -> None:
    lines = [
        "| peer | target (ours) | given to the peer | peer's claim | ours, with scales | "
        "within budget | layers per format | scored windows | search time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        counts = ", ".join(f"{fmt}: {n}" for fmt, n in row["format_counts"].items())
        lines.append(
            f"| {row['peer']} | {row['target_bits']:g} | {row['peer_budget']:.3f} | "
            f"{row['peer_claimed_bits']:.3f} ({row['peer_convention']}) | "
            f"{row['memory_with_scales']:.3f} | {'yes' if row['within_budget'] else 'NO'} | "
            f"{counts} | {row.get('score_windows', row['nsamples'])} of {row['nsamples']} | "
            f"{row['search_time_s']:.0f} (scoring {row['score_time_s']:.0f}, "
            f"solve {row['solve_time_s']:.1f}) |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
        f.write(
            "\nBits are averages over the quantized Linear weights, weighted by their sizes; "
            "'ours, with scales' adds one 8-bit E8M0 scale per 32 weights. Each peer scores "
            "once; the search time of a target is that scoring plus its own solve.\n")


def read_rows(path: str) -> List[Dict]:
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def parse_formats(text: str) -> List[str]:
    formats = [element_format(name).name for name in text.split(",") if name.strip()]
    if len(formats) < 2:
        raise argparse.ArgumentTypeError("--formats needs at least two formats")
    return sorted(set(formats), key=lambda f: element_format(f).bits)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peers.py",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="as brevitas_dmx_llm's --model")
    parser.add_argument(
        "--dataset",
        required=True,
        help="as brevitas_dmx_llm's --dataset (local .txt/.jsonl, "
        "enwiki-gensim)")
    parser.add_argument("--peers", nargs="+", choices=PEERS, default=list(PEERS))
    parser.add_argument(
        "--targets",
        nargs="+",
        type=float,
        required=True,
        help="budgets in memory bits per weight WITH the E8M0 scales (MXFP4 = 4.25)")
    parser.add_argument(
        "--formats",
        type=parse_formats,
        default=parse_formats(DEFAULT_FORMATS),
        help=f"candidate element formats, comma-separated (default {DEFAULT_FORMATS}: MXFP4 and "
        f"MXFP8; ModelOpt also takes e3m2 and e2m3, auto-round e2m3)")
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--nsamples", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="as brevitas_dmx_llm's --seed")
    parser.add_argument(
        "--eval-fraction",
        type=float,
        default=0.4,
        help="held-out share of the text, as --dmx-eval-fraction")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch-size", type=int, default=4, help="windows per forward pass")
    parser.add_argument(
        "--modelopt-score-batches",
        type=int,
        default=None,
        help="ModelOpt's num_score_steps: score on the first N batches only (default: all). "
        "kl_div runs one forward pass per layer group, format and batch")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--verbose", action="store_true", help="the peers' own search logs")
    return parser


def run(args) -> List[Dict]:
    check_peers(args.peers, args.formats)
    for target in args.targets:
        low = min(element_format(f).bits for f in args.formats) + E8M0_SCALE_BITS / BLOCK_SIZE
        high = max(element_format(f).bits for f in args.formats) + E8M0_SCALE_BITS / BLOCK_SIZE
        if not low <= target <= high:
            raise SystemExit(f"--targets {target:g} is outside [{low}, {high}] for {args.formats}")
    os.makedirs(os.path.join(args.output, "maps"), exist_ok=True)
    seed_everything(args.seed)
    tokenizer, samples = load_calibration(args)
    logger.info(f"{len(samples)} calibration windows of {args.seqlen} tokens")
    rows = []
    results_path = os.path.join(args.output, "peers.jsonl")
    for peer in tqdm(args.peers, desc="peers", unit="peer"):
        seed_everything(args.seed)
        model = load_model(args)
        shapes = layer_shapes(model)
        logger.info(f"{peer}: searching {len(shapes)} layers for targets {args.targets}")
        result = PEER_RUNNERS[peer](model, tokenizer, samples, args.targets, args)
        for target in args.targets:
            path = os.path.join(args.output, "maps", f"{peer}-{target_label(target)}.json")
            write_map(path, result.maps[target])
            row = record(peer, target, result, shapes, path, args)
            rows.append(row)
            with open(results_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            logger.info(
                f"{peer} at {target:g}: claims {row['peer_claimed_bits']:.3f}, "
                f"{row['memory_with_scales']:.3f} with scales, {row['format_counts']}, "
                f"{row['search_time_s']:.0f} s")
        del model
    write_table(read_rows(results_path), os.path.join(args.output, "peers.md"))
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (PeerMissing, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
