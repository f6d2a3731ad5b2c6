# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Weight rounding after the format search: Brevitas's GPTQ, Qronos, GPFQ or MagR on a
finalized model, each layer's weights rounded in that layer's own fixed MX format.

``optimize_weights`` drives Brevitas's public context managers (``gptq_mode``, ``gpfq_mode``,
``magr_mode``) the way ``brevitas_examples/llm`` does, one decoder block at a time: the
inputs of the first block are cached once, each block is optimized on them, and its
(weight-quantized) outputs become the next block's inputs. The example's own block loop
(``block_optimization``) moves every batch to CUDA, so it cannot run on a CPU; this module has
its own, on the model's device.

Speed on MX. Brevitas's GPTQ re-quantizes a column's weights after every column update; for a
groupwise quantizer it cannot slice (``GPxQ.get_quant_weights``: "Groupwise Quantization does
not support slicing"), so it quantizes the whole matrix once per input column: for SmolLM2-135M
~5000 full-matrix quantizations per decoder block, most of the run. An MX block is 32
consecutive input channels with its own scale, so a column's quantized values depend only on
its block: the optimizers here (subclasses passed through ``gptq_class``/``algorithm_impl``)
quantize just that block with a Brevitas proxy made from the layer's own injector, the same
numbers (``tests/test_weight_rounding.py`` checks bit equality with the stock path) at ~1/50
of the cost for a 1536-wide layer.
"""

from contextlib import contextmanager
from functools import partial
import logging
import time
from typing import Dict, List, Optional, Tuple

from brevitas.graph.calibrate import quantization_status_manager
from brevitas.graph.gpfq import GPFQ
from brevitas.graph.gpfq import gpfq_mode
from brevitas.graph.gptq import GPTQ
from brevitas.graph.gptq import gptq_mode
from brevitas.graph.magr import magr_mode
from brevitas.graph.qronos import Qronos
import brevitas.nn as qnn
from brevitas.quant_tensor import _unpack_quant_tensor
from brevitas.utils.torch_utils import StopFwdException
import torch
from torch import nn
from torch import Tensor
from tqdm.auto import tqdm

from brevitas_dmx.config import TIE_PRESETS

__all__ = ["ALGORITHMS", "optimize_weights"]

log = logging.getLogger(__name__)

ALGORITHMS = ("gptq", "qronos", "gpfq", "magr")

# Sibling layers that read the same input (q/k/v of an attention, gate/up of an MLP): optimizing
# them from one forward pass gives the same result as one at a time, with fewer passes.
_PARALLEL_SUFFIXES = TIE_PRESETS["qkv-gateup"]


class _MXBlockQuant:
    """Mixin for a ``GPxQ`` optimizer: a column's quantized weights from its own MX block only.

    Exact because an MX weight quantizer works on blocks of ``group_size`` consecutive input
    channels, each on its own scale: quantizing the blocks of some columns as a ``[rows,
    group_size]`` matrix gives the numbers the whole weight's quantization has there. Falls
    back to Brevitas's whole-matrix path for any layer that is not such a case."""

    fast_path = True

    def _block_setup(self) -> bool:
        if hasattr(self, "_blocks_ok"):
            return self._blocks_ok
        proxy = self.layer.weight_quant
        ok = (
            self.fast_path and isinstance(self.layer, qnn.QuantLinear) and proxy.is_groupwise and
            not proxy.requires_quant_input and not proxy.export_mode and
            getattr(proxy, "group_dim", None) in (1, -1))
        if ok:
            self._group = int(proxy.group_size)
            ok = int(self.columns) % self._group == 0
        self._blocks_ok = ok
        self._proxies = {}
        self._q_cache = None  # for the algorithms that read every quantized column so far
        return ok

    def _proxy(self, rows: int) -> nn.Module:
        """A proxy of the layer's quantizer for a ``[rows, group_size]`` weight; only the
        tracked weight's shape is used (the weight quantizer's scale is runtime stats)."""
        if rows not in self._proxies:
            weight = self.layer.weight
            shape_only = nn.Linear(
                self._group, rows, bias=False, device=weight.device, dtype=weight.dtype)
            injector = self.layer.weight_quant.quant_injector
            proxy = injector.proxy_class(shape_only, injector)
            proxy.train(self.layer.weight_quant.training)
            self._proxies[rows] = proxy
        return self._proxies[rows]

    def _quantize_blocks(self, blocks: Tensor) -> Tuple[Tensor, Tensor]:
        """(column indices, quantized weight there [OC, len(blocks) * group_size])."""
        weight = self.layer.weight.data
        cols = (blocks[:, None] * self._group
                + torch.arange(self._group, device=blocks.device)).flatten()
        rows = weight.shape[0]
        chunk = weight[:, cols].reshape(rows * len(blocks), self._group)
        quant = _unpack_quant_tensor(self._proxy(chunk.shape[0])(chunk))
        return cols, quant.reshape(rows, len(cols))

    def get_quant_weights(self, i, i1, permutation_list, with_quant_history=False):
        if not self._block_setup() or len(permutation_list) != 1:
            return super().get_quant_weights(i, i1, permutation_list, with_quant_history)
        for m in self.layer.weight_quant.modules():
            if hasattr(m, "init_done") and not m.init_done:
                raise RuntimeError(
                    "Weight quantizer not initialized. Run a forward pass after quantization "
                    "and try again.")
        i = i1 + i
        perm = permutation_list[0]
        if not with_quant_history:
            index = int(perm[i])
            block = torch.tensor([index // self._group], device=perm.device)
            cols, quant = self._quantize_blocks(block)
            return quant[:, index - int(cols[0])].unsqueeze(0)  # [1, OC]
        return self._quant_history(perm[:i]).unsqueeze(0)  # [1, OC, i]

    def _quant_history(self, columns: Tensor) -> Tensor:
        """The quantized weight's ``columns``: GPFQ and Qronos read all of the columns done so
        far, and change one column between reads, so only the blocks whose float weights
        changed since the last read are quantized again."""
        weight = self.layer.weight.data
        if self._q_cache is None:
            self._q_cache = _unpack_quant_tensor(self.layer.quant_weight()).detach().clone()
            self._q_seen = weight.clone()
        else:
            rows = weight.shape[0]
            changed = (weight != self._q_seen).view(rows, -1, self._group).any(2).any(0)
            blocks = changed.nonzero().flatten()
            if len(blocks) * 2 > changed.numel():
                self._q_cache = _unpack_quant_tensor(self.layer.quant_weight()).detach().clone()
            elif len(blocks):
                cols, quant = self._quantize_blocks(blocks)
                self._q_cache[:, cols] = quant
            self._q_seen.copy_(weight)
        return self._q_cache[:, columns]

    def single_layer_update(self, *args, **kwargs):
        try:
            return super().single_layer_update(*args, **kwargs)
        finally:
            # Free the caches: the layer is done.
            self._proxies, self._q_cache, self._q_seen = {}, None, None

    def update_batch(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return super().update_batch(*args, **kwargs)
        finally:  # also when the hook stops the forward pass (StopFwdException)
            _TIMES["accumulate"] += time.perf_counter() - start


# Seconds of covariance (Hessian) accumulation in the forward hooks during a run, summed over
# layers: a part of the forward passes' time.
_TIMES = {"accumulate": 0.0}


class MXGPTQ(_MXBlockQuant, GPTQ):
    """Brevitas's GPTQ, quantizing one MX block per column (see ``_MXBlockQuant``)."""


class MXGPFQ(_MXBlockQuant, GPFQ):
    """Brevitas's GPFQ, quantizing only the changed MX blocks per column."""


class MXQronos(_MXBlockQuant, Qronos):
    """Brevitas's Qronos, quantizing one MX block per column."""


def _slow(cls):
    """``cls`` with Brevitas's own whole-matrix quantization per column (for comparison)."""
    return type(cls.__name__ + "WholeMatrix", (cls,), {"fast_path": False})


def _check_model(model: nn.Module) -> int:
    from brevitas_dmx.model import dmx_layers
    from brevitas_dmx.model import mx_quantizers
    learnable = dmx_layers(model)
    if learnable:
        names = [name for name, _ in learnable][:3]
        raise ValueError(
            f"optimize_weights needs a finalized model, but {len(learnable)} layers (e.g. "
            f"{names}) still have learnable dMX quantizers: call brevitas_dmx.finalize(model) "
            f"first.")
    weights = [name for name, q in mx_quantizers(model) if q.is_weight]
    if not weights:
        raise ValueError(
            "optimize_weights needs a finalized model with fixed MX weight quantizers; this "
            "model has none.")
    return len(weights)


def _batches(calibration: List[Dict[str, Tensor]], batch_size: int,
             device: torch.device) -> List[Dict[str, Tensor]]:
    """The samples stacked into ``[batch, seqlen]`` model inputs; only the keys the forward
    pass needs (a sample's ``labels`` would make the model compute a loss)."""
    out = []
    for start in range(0, len(calibration), batch_size):
        chunk = calibration[start:start + batch_size]
        batch = {"input_ids": torch.stack([s["input_ids"] for s in chunk]).to(device)}
        if all("attention_mask" in s for s in chunk):
            batch["attention_mask"] = torch.stack([s["attention_mask"] for s in chunk]).to(device)
        out.append(batch)
    return out


def _decoder_blocks(model: nn.Module) -> Optional[Tuple[str, nn.ModuleList]]:
    """The ModuleList of decoder blocks (``model.layers`` in Hugging Face models) if it holds
    every MX weight quantizer of the model, else None."""
    from brevitas_dmx.model import mx_quantizers
    weights = [name for name, q in mx_quantizers(model) if q.is_weight]
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] in ("layers", "h", "blocks"):
            if all(w.startswith(name + ".") for w in weights):
                return name, module
    return None


def _parallel_groups(module: nn.Module, supported) -> Optional[List[List[str]]]:
    by_parent: Dict[Tuple[str, int], List[str]] = {}
    for name, layer in module.named_modules():
        if not supported(layer):
            continue
        parent, _, leaf = name.rpartition(".")
        for index, suffixes in enumerate(_PARALLEL_SUFFIXES):
            if leaf in suffixes:
                by_parent.setdefault((parent, index), []).append(name)
    groups = [names for names in by_parent.values() if len(names) > 1]
    return groups or None


def _is_weight_quantized(layer: nn.Module) -> bool:
    proxy = getattr(layer, "weight_quant", None)
    return isinstance(layer, nn.Linear) and proxy is not None and proxy.is_quant_enabled


@contextmanager
def _no_kv_cache(model: nn.Module):
    config = getattr(model, "config", None)
    previous = getattr(config, "use_cache", None)
    if config is not None and previous is not None:
        config.use_cache = False
    try:
        yield
    finally:
        if config is not None and previous is not None:
            config.use_cache = previous


def _mode(algorithm: str, module: nn.Module, options: Dict):
    """The Brevitas context manager for ``algorithm`` on ``module``."""
    common = dict(
        group_of_parallel_layers=options["groups"],
        device=options["buffer_device"],
        dtype=options["buffer_dtype"])
    fast = options["fast_path"]
    if algorithm == "gptq":
        return gptq_mode(
            module,
            act_order=options["act_order"],
            use_quant_activations=options["use_quant_activations"],
            create_weight_orig=False,
            num_blocks=options["num_blocks"],
            gptq_class=MXGPTQ if fast else _slow(MXGPTQ),
            **common)
    if algorithm in ("gpfq", "qronos"):
        if algorithm == "gpfq":
            impl = MXGPFQ if fast else _slow(MXGPFQ)
        else:
            impl = partial(
                MXQronos if fast else _slow(MXQronos),
                alpha=options["alpha"],
                num_blocks=options["num_blocks"])
        # GPFQ and Qronos need the float weights (weight_orig) for their float pass.
        return gpfq_mode(
            module,
            act_order=options["act_order"],
            use_quant_activations=options["use_quant_activations"],
            create_weight_orig=True,
            algorithm_impl=impl,
            **common)
    return magr_mode(
        module,
        alpha=options["alpha"],
        num_steps=options["num_steps"],
        create_weight_orig=False,
        **common)


def _run_mode(algorithm, module, options, inputs, seconds):
    """Optimizes every quantized layer of ``module`` on ``inputs``: (args, kwargs) pairs."""
    with _mode(algorithm, module, options) as algo:
        if algorithm == "magr":
            # MagR reads each layer's covariance from one pass and updates all layers at once.
            passes = 1
        else:
            passes = algo.num_layers
        for _ in range(passes):
            start = time.perf_counter()
            for args, kwargs in inputs:
                algo.model(*args, **kwargs)
            seconds["forward"] += time.perf_counter() - start
            start = time.perf_counter()
            algo.update()
            seconds["update_calls"] += time.perf_counter() - start
        return len(algo.gpxq_layers)


def _capture_block_inputs(model, blocks, batches, quant_status) -> List:
    cached = []

    def intercept(module, args, kwargs):
        cached.append((args, kwargs))
        raise StopFwdException

    hook = blocks[0].register_forward_pre_hook(intercept, with_kwargs=True)
    try:
        with quant_status():
            for batch in batches:
                try:
                    model(**batch)
                except StopFwdException:
                    pass
    finally:
        hook.remove()
    return cached


def _propagate(block, inputs, quant_status) -> List:
    """The next block's inputs: this block's outputs, weights quantized as now rounded."""
    out = []
    with quant_status():
        for args, kwargs in inputs:
            output = block(*args, **kwargs)
            if isinstance(output, (tuple, list)):
                output = output[0]
            out.append(((output,) + tuple(args[1:]), kwargs))
    return out


@torch.no_grad()
def optimize_weights(
        model: nn.Module,
        calibration: List[Dict[str, Tensor]],
        algorithm: str = "gptq",
        *,
        batch_size: int = 8,
        blockwise: bool = True,
        parallel_siblings: bool = True,
        keep_weight_orig: bool = False,
        progress: bool = True,
        **options) -> Dict:
    """Rounds the weights of a finalized model with Brevitas's ``algorithm`` ('gptq', 'qronos',
    'gpfq' or 'magr') on ``calibration`` samples (dicts with 1-D ``input_ids`` and
    ``attention_mask``), in place. Formats and quantizers stay as they are; only the float
    weights move, so each layer's rounding is in its own format. Returns timings and counts.

    Options (defaults as in ``brevitas_examples/llm``): ``act_order`` (columns in decreasing
    Hessian diagonal); ``use_quant_activations`` (inputs quantized while collecting the
    covariances; None: off for GPTQ, on for GPFQ/Qronos, as in the example); ``num_blocks``
    (GPTQ/Qronos lazy-update blocks); ``alpha`` (Qronos damping, default 1e-6; MagR penalty,
    default 0.01); ``num_steps`` (MagR). ``blockwise`` optimizes one decoder block at a time
    on cached block inputs (else the whole model runs once per layer); ``parallel_siblings``
    optimizes q/k/v and gate/up from one pass (same input, same result); ``fast_path``
    quantizes one MX block per GPTQ column instead of the whole matrix (same numbers)."""
    n_weights = _check_model(model)
    options = _options(algorithm, calibration, batch_size, **options)
    device = next(model.parameters()).device
    had_orig = {id(m) for m in model.modules() if "weight_orig" in m._buffers}
    was_training = model.training
    model.eval()
    batches = _batches(calibration, batch_size, device)
    seconds = dict.fromkeys(("capture", "forward", "update_calls", "propagate"), 0.0)
    _TIMES["accumulate"] = 0.0
    found = _decoder_blocks(model) if blockwise else None
    if algorithm == "magr" and found is None:
        # Whole-model MagR would also change the float LM head: magr_mode takes every Linear.
        raise ValueError("MagR runs block by block; no decoder blocks holding every MX layer.")
    start = time.perf_counter()
    with _no_kv_cache(model):
        log.info(
            "%s on %d layers, %s, %d samples in %d batches",
            algorithm.upper(),
            n_weights,
            f"{len(found[1])} decoder blocks of {found[0]}" if found else "the whole model",
            len(calibration),
            len(batches))
        if found is not None:
            optimized = _optimize_blockwise(
                model, found[1], batches, options, seconds, parallel_siblings, progress)
        else:
            if parallel_siblings:
                options["groups"] = _parallel_groups(model, _is_weight_quantized)
            inputs = [((), batch) for batch in batches]
            optimized = _run_mode(algorithm, model, options, inputs, seconds)
    if not keep_weight_orig:
        _drop_new_weight_orig(model, had_orig)
    model.train(was_training)
    info = {
        "algorithm": algorithm,
        "layers": optimized,
        "blocks": len(found[1]) if found is not None else 0,
        "samples": len(calibration),
        "tokens": int(sum(s["input_ids"].numel() for s in calibration)),
        "fast_path": options["fast_path"],
        "seconds": _timings(time.perf_counter() - start, seconds),
    }
    log.info("%s done in %.1f s (%s)", algorithm.upper(), info["seconds"]["total"], info["seconds"])
    return info


def _drop_new_weight_orig(model: nn.Module, had_orig) -> None:
    # The float copies GPFQ/Qronos made: with them, disabling weight quantization would give
    # the old weights, and checkpoints would carry them.
    for module in model.modules():
        if "weight_orig" in module._buffers and id(module) not in had_orig:
            del module._buffers["weight_orig"]


def _timings(total: float, seconds: Dict) -> Dict:
    # Forward passes through the blocks with the covariance hooks (accumulation is part of
    # them), and the per-layer weight updates (the update() calls).
    return {
        "total": total,
        "capture_inputs": seconds["capture"],
        "forward": seconds["forward"],
        "accumulate": _TIMES["accumulate"],
        "update": seconds["update_calls"],
        "propagate": seconds["propagate"],
    }


def _options(
        algorithm: str,
        calibration,
        batch_size: int,
        *,
        act_order: bool = False,
        use_quant_activations: Optional[bool] = None,
        num_blocks: int = 100,
        alpha: Optional[float] = None,
        num_steps: int = 200,
        fast_path: bool = True,
        buffer_device: str = "cpu",
        buffer_dtype: torch.dtype = torch.float32) -> Dict:
    """The checked options of ``optimize_weights``, with the example's per-algorithm defaults."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"Unknown algorithm {algorithm!r}; choose one of {list(ALGORITHMS)}.")
    if not calibration:
        raise ValueError("optimize_weights needs at least one calibration sample.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if use_quant_activations is None:
        use_quant_activations = algorithm in ("gpfq", "qronos")
    if alpha is None:
        alpha = {"qronos": 1e-6, "magr": 0.01}.get(algorithm, 0.0)
    if algorithm == "qronos" and alpha <= 0:
        raise ValueError(f"Qronos needs alpha > 0, got {alpha}")
    return dict(
        algorithm=algorithm,
        act_order=act_order,
        use_quant_activations=use_quant_activations,
        num_blocks=num_blocks,
        alpha=alpha,
        num_steps=num_steps,
        fast_path=fast_path,
        buffer_device=buffer_device,
        buffer_dtype=buffer_dtype,
        groups=None)


def _optimize_blockwise(
        model, blocks, batches, options, seconds, parallel_siblings, progress) -> int:
    """Optimizes one decoder block at a time on the cached inputs of that block, then moves
    the inputs on through the optimized block; returns the number of layers optimized."""
    algorithm = options["algorithm"]

    def quant_status():
        # As the example's block loop: weights quantized, inputs as the algorithm reads them.
        return quantization_status_manager(
            model,
            disable_act_quant=not options["use_quant_activations"],
            disable_weight_quant=False,
            disable_bias_quant=not options["use_quant_activations"])

    tic = time.perf_counter()
    inputs = _capture_block_inputs(model, blocks, batches, quant_status)
    seconds["capture"] += time.perf_counter() - tic
    optimized = 0
    bar = tqdm(blocks, desc=f"{algorithm.upper()} blocks", disable=not progress)
    for index, block in enumerate(bar):
        if parallel_siblings:
            options["groups"] = _parallel_groups(block, _is_weight_quantized)
        optimized += _run_mode(algorithm, block, options, inputs, seconds)
        if index < len(blocks) - 1:
            tic = time.perf_counter()
            inputs = _propagate(block, inputs, quant_status)
            seconds["propagate"] += time.perf_counter() - tic
    return optimized
