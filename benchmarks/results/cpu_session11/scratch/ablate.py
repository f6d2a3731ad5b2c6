import sys, time, statistics, torch
sys.path.insert(0, "/work/main/benchmarks")
from bench_step import make_step, quantize
from transformers import LlamaConfig, LlamaForCausalLM
from brevitas_dmx import functional
torch.set_num_threads(2)
def build():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=30,
                      num_attention_heads=2, num_key_value_heads=2)
    return LlamaForCausalLM(cfg)
ids = torch.randint(0, 256, (1, 32))
functional.enable_compile(True)
steps = {}
for v in ("float", "dmx"):
    m = quantize(build(), v)
    steps[v] = make_step(m, v, ids, torch.device("cpu"))[0]
    for _ in range(3): steps[v]()
real_f, real_b = functional._KERNELS["linear_forward"], functional._KERNELS["linear_backward"]
def fake_f(xb, wb, bias, cx, cw, rx, rw):
    return xb.new_zeros(xb.shape[0], wb.shape[0]), xb.new_ones(xb.shape[0], xb.shape[1], 1), wb.new_ones(wb.shape[0], wb.shape[1], 1)
z = torch.zeros(())
def fake_b(xb, wb, cx, cw, sx, sw, g):
    return torch.zeros_like(xb), [z, z, z], [z, z, z]
def eager_f(*a): return functional._EAGER["linear_forward"](*a)
modes = {"compiled": (real_f, real_b), "eager": (functional._EAGER["linear_forward"], functional._EAGER["linear_backward"]), "fake kernels": (fake_f, fake_b)}
res = {m: [] for m in list(modes) + ["float"]}
for r in range(10):
    for mode, (f, b) in modes.items():
        functional._KERNELS["linear_forward"], functional._KERNELS["linear_backward"] = f, b
        t = time.perf_counter(); steps["dmx"](); res[mode].append(time.perf_counter() - t)
    t = time.perf_counter(); steps["float"](); res["float"].append(time.perf_counter() - t)
fl = statistics.median(res["float"])
for m in res: print(f"{m:14s} {1e3*statistics.median(res[m]):7.1f} ms/step, over float per linear {1e3*(statistics.median(res[m])-fl)/210:.3f} ms")
