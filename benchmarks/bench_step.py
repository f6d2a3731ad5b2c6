# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""One dMX training step of a whole model: float vs Brevitas's fixed MXFP8 vs dMX (eager and
compiled), with the weights frozen.

A step is forward + backward of the next-token loss. Every Linear but the LM head is quantized
(weights and inputs, blocks of 32), as ``brevitas_dmx_llm`` does. dMX trains its offsets; the
float and fixed-MXFP8 models have nothing to train, so their input embeddings require grad: every
variant then runs the same backward through all decoder layers (what the offsets of the first
layers need).

The variants run interleaved in one process (float, MXFP8, dMX, ... repeated), so that a machine
shared with other work disturbs them alike; the table gives medians and ratios.

    python benchmarks/bench_step.py --model llama-1b-layers --layers 2 --tokens 512
    python benchmarks/bench_step.py --model smollm2-135m --tokens 256
    python benchmarks/bench_step.py --device cuda --model llama-1b-layers --layers 16 --tokens 2048

With ``--micro-batches K`` a step is K forward/backward passes of ``--batch`` sequences each,
gradients accumulated (the paper's batch on a device that holds fewer sequences at once); the
dMX variants then share the weight work among them as the trainer does
(``reusing_quantized_weights``), the ``*-noreuse`` variants do not. "Saved for bwd" is that of
one micro-batch.

``llama-1b-layers``: random weights with Llama-3.2-1B's shapes (hidden 2048, intermediate 8192,
32 heads, 8 KV heads), ``--layers`` decoder layers, and by default a vocabulary scaled with the
depth (128256 x layers / 16, so that the LM head keeps its share of the full model's work).
``llama-8b-layers``: the same with Llama-3.1-8B's shapes (hidden 4096, intermediate 14336, head
dimension 128, untied LM head; vocabulary 128256 x layers / 32).
"""

import argparse
import contextlib
import copy
import json
import os
import statistics
import threading
import time

import torch
from torch import nn

from brevitas_dmx.profiling import saved_tensor_bytes

# dmx-unfused: the learnable quantizers in a stock qnn.QuantLinear (before the fused step);
# dmx: DMXQuantLinear with all formats computed at once per pass (batched_formats), what the
# trainer of brevitas_dmx_llm runs; dmx-unbatched: DMXQuantLinear, each quantizer computing its
# own format (before batched_formats); dmx-compiled: dmx with torch.compile;
# *-noreuse: with --micro-batches, every micro-batch quantizes the weights and runs their
# element sums (before reusing_quantized_weights, which the others use as the trainer does).
# dMX steps include the trainer's bit penalty (target-aware, memory average with scales).
VARIANTS = ("float", "brevitas-mxfp8", "dmx-unfused", "dmx", "dmx-compiled")
OTHERS = ("dmx-unbatched", "dmx-noreuse", "dmx-compiled-noreuse")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


# The decoder shapes of Llama-3.2-1B and Llama-3.1-8B (their full depths scale the vocabulary).
LLAMA_SHAPES = {
    "llama-1b-layers":
        dict(
            hidden_size=2048,
            intermediate_size=8192,
            num_attention_heads=32,
            head_dim=64,
            num_hidden_layers=16,
            tie_word_embeddings=True),
    "llama-8b-layers":
        dict(
            hidden_size=4096,
            intermediate_size=14336,
            num_attention_heads=32,
            head_dim=128,
            num_hidden_layers=32,
            tie_word_embeddings=False),
}


def build_float_model(name, layers, vocab, dtype):
    if name == "smollm2-135m":
        from brevitas_dmx.loading import load_model
        return load_model("smollm2-135m", "float32").to(dtype)
    from transformers import LlamaConfig
    from transformers import LlamaForCausalLM
    shape = LLAMA_SHAPES[name]
    vocab = vocab or max(1024, round(128256 * layers / shape["num_hidden_layers"]))
    config = LlamaConfig(
        vocab_size=vocab,
        **{
            **shape, "num_hidden_layers": layers
        },
        num_key_value_heads=8,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        torch_dtype=dtype)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.02)
        for module in model.modules():  # the rotary inv_freq buffers and the norms
            if hasattr(module, "rope_init_fn"):
                inv_freq, _ = module.rope_init_fn(module.config, "cpu")
                module.inv_freq.copy_(inv_freq)
            if type(module).__name__.endswith("RMSNorm"):
                module.weight.fill_(1.0)
    return model.to(dtype)


def quantize(model, variant):
    from brevitas.graph.quantize import layerwise_quantize
    import brevitas.nn as qnn

    from brevitas_dmx.model import use_compiled_kernels
    from brevitas_dmx.nn import DMXQuantLinear
    from brevitas_dmx.quant import DMXFloatAct
    from brevitas_dmx.quant import DMXFloatWeight
    from brevitas_dmx.quant.fixed import fixed_mx_quantizer
    if variant == "float":
        return model
    if variant == "brevitas-mxfp8":
        weight, act = fixed_mx_quantizer("e4m3", "weight"), fixed_mx_quantizer("e4m3", "act")
    else:
        weight, act = DMXFloatWeight, DMXFloatAct
    layer_class = qnn.QuantLinear if variant == "dmx-unfused" else DMXQuantLinear
    layer_map = {
        nn.Linear:
            (
                layer_class, {
                    "weight_quant": weight, "input_quant": act, "return_quant_tensor": False
                })
    }
    model = layerwise_quantize(model, layer_map, name_blacklist=["lm_head"])
    # each variant's model runs its own kernels: the variants interleave with no switching
    use_compiled_kernels(model, variant.startswith("dmx-compiled"))
    return model


class RSSPeak:
    """Peak resident memory during a block, sampled every 2 ms (CPU)."""

    def __init__(self):
        self.peak = 0

    @staticmethod
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        self.base = self.peak = self.rss()
        self._stop = False

        def sample():
            while not self._stop:
                self.peak = max(self.peak, self.rss())
                time.sleep(0.002)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop = True
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def make_step(model, variant, input_ids, device, micro_batches=1):
    """A closure running one training step (an optimizer step over ``micro_batches`` equal
    slices of ``input_ids``, gradients accumulated); returns nothing."""
    from brevitas_dmx.model import batched_formats
    from brevitas_dmx.model import reusing_quantized_weights
    from brevitas_dmx.model import train_only_offsets
    from brevitas_dmx.solver.regularizers import TargetAwarePenalty
    offsets = [o.raw_offset for o in train_only_offsets(model)]
    model.train()
    embed = model.get_input_embeddings()
    slices = input_ids.chunk(micro_batches)
    penalty = TargetAwarePenalty(5.0, weighting="memory", include_scale_bits=True)
    batching = contextlib.ExitStack()  # open as long as the step closure lives
    if offsets and variant != "dmx-unbatched":
        batching.enter_context(batched_formats(model))
    reuse = None
    if offsets and micro_batches > 1 and not variant.endswith("-noreuse"):
        reuse = batching.enter_context(reusing_quantized_weights(model))

    def forward(ids=slices[0]):
        if offsets:
            loss = model(input_ids=ids, labels=ids).loss
            return loss + penalty(model)[0]
        embeds = embed(ids).detach().requires_grad_(True)
        return model(inputs_embeds=embeds, labels=ids).loss

    def step():
        for p in offsets:
            p.grad = None
        for k, ids in enumerate(slices):
            if reuse is not None:
                reuse.last = k == len(slices) - 1
            (forward(ids) / len(slices)).backward()
        if offsets:  # the optimizer step moves the format: no reuse across steps
            with torch.no_grad():
                for p in offsets:
                    p.add_(1e-3)

    step.formats_batching = batching  # closing it (or collecting it) removes the hooks
    return step, forward


def profile_step(step, variant: str, device) -> None:
    """Prints where the host and device time of one step go, and the kernel launches."""
    from torch.profiler import profile
    from torch.profiler import ProfilerActivity
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        step()
        _sync(device)
    events = prof.key_averages()
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel"))
    aten = sum(e.count for e in events if e.key.startswith("aten::"))
    print(f"\nprofile of one {variant} step: {aten} aten calls, {launches} kernel launches")
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(events.table(sort_by="self_cpu_time_total", row_limit=12))
    if device.type == "cuda":
        print(events.table(sort_by=sort, row_limit=8))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="llama-1b-layers", choices=tuple(LLAMA_SHAPES) + ("smollm2-135m",))
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=None)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=256, help="sequence length")
    parser.add_argument(
        "--micro-batches",
        type=int,
        default=1,
        help="forward/backward passes of --batch sequences per step, gradients accumulated")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"any of {VARIANTS + OTHERS}")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after the timings, torch.profiler over one step of each dMX variant: the top "
        "operations by host time and the number of kernel launches")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    variants = args.variants.split(",")

    from brevitas import config
    config.IGNORE_MISSING_KEYS = True
    base = build_float_model(args.model, args.layers, args.vocab, dtype)
    vocab = base.config.vocab_size
    torch.manual_seed(1)
    input_ids = torch.randint(
        0, vocab, (args.batch * args.micro_batches, args.tokens), device=device)
    steps, forwards = {}, {}
    for variant in variants:
        model = quantize(copy.deepcopy(base), variant).to(device)
        steps[variant], forwards[variant] = make_step(
            model, variant, input_ids, device, args.micro_batches)
    del base

    def run(variant):
        _sync(device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        # Peaks over the memory held at the start, as on the CPU: the other variants' models stay
        # on the GPU meanwhile.
        held = torch.cuda.memory_allocated() if device.type == "cuda" else 0
        with RSSPeak() as rss:
            start = time.perf_counter()
            steps[variant]()
            _sync(device)
            seconds = time.perf_counter() - start
        peak = (
            torch.cuda.max_memory_allocated() - held if device.type == "cuda" else rss.peak
            - rss.base)
        return seconds, peak

    warm = {}
    for variant in variants:  # warm-up (and compilation) outside the timings
        start = time.perf_counter()
        for _ in range(args.warmup):
            run(variant)
        warm[variant] = time.perf_counter() - start
    times = {v: [] for v in variants}
    peaks = {v: [] for v in variants}
    for _ in range(args.repeats):
        for variant in variants:
            seconds, peak = run(variant)
            times[variant].append(seconds)
            peaks[variant].append(peak)
    saved = {}
    for variant in variants:
        saved[variant] = saved_tensor_bytes(forwards[variant])[1]

    name = f"CPU x{torch.get_num_threads()}"
    if device.type == "cuda":
        name = torch.cuda.get_device_name()
    print(
        f"device: {name}, torch {torch.__version__}, model {args.model}"
        f"{f' ({args.layers} layers, vocab {vocab})' if args.model != 'smollm2-135m' else ''}, "
        f"batch {args.batch}x{args.tokens}"
        f"{f' x {args.micro_batches} micro-batches' if args.micro_batches > 1 else ''}, "
        f"{args.dtype}, median of {args.repeats} interleaved")
    peak_name = "CUDA peak over start (MiB)" if device.type == "cuda" else "peak RSS over start (MiB)"
    print(
        f"| variant | step (s) | vs float | vs Brevitas MXFP8 | saved for bwd (MiB) | vs float "
        f"| vs Brevitas | {peak_name} | warm-up steps (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    ref_t = statistics.median(times["float"]) if "float" in times else None
    brv_t = statistics.median(times["brevitas-mxfp8"]) if "brevitas-mxfp8" in times else None
    for variant in variants:
        t = statistics.median(times[variant])
        p = statistics.median(peaks[variant])
        row = dict(
            variant=variant,
            step_s=t,
            times=times[variant],
            saved_bytes=saved[variant],
            peak_bytes=p,
            warmup_s=warm[variant])
        rows.append(row)

        def ratio(a, b):
            return "-" if b is None else f"{a / b:.2f}x"

        print(
            f"| {variant} | {t:.3f} | {ratio(t, ref_t)} | {ratio(t, brv_t)} "
            f"| {saved[variant] / 2**20:.0f} "
            f"| {ratio(saved[variant], saved.get('float'))} "
            f"| {ratio(saved[variant], saved.get('brevitas-mxfp8'))} | {p / 2**20:.0f} "
            f"| {warm[variant]:.1f} |")
    print(
        "all step times (s): "
        + ", ".join(f"{v}: {[round(x, 3) for x in times[v]]}" for v in variants))
    if args.profile:
        for variant in variants:
            if variant.startswith("dmx"):
                profile_step(steps[variant], variant, device)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
