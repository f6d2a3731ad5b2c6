import sys, time, cProfile, pstats, torch
sys.path.insert(0, "/work/main/benchmarks")
from bench_step import make_step, quantize
from transformers import LlamaConfig, LlamaForCausalLM
from brevitas_dmx import functional
torch.set_num_threads(int(__import__("os").environ.get("NT", "2")))
def build():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=30,
                      num_attention_heads=2, num_key_value_heads=2)
    return LlamaForCausalLM(cfg)
ids = torch.randint(0, 256, (1, 32))
steps = {}
for v in ("float", "dmx"):
    m = quantize(build(), v)
    functional.enable_compile(v != "float")
    steps[v] = make_step(m, v, ids, torch.device("cpu"))[0]
    for _ in range(3): steps[v]()
functional.enable_compile(True)
res = {v: [] for v in steps}
for r in range(10):
    for v, s in steps.items():
        t = time.perf_counter(); s(); res[v].append(time.perf_counter() - t)
import statistics
for v in res: print(v, "median ms", 1e3*statistics.median(res[v]))
print("per linear per step (ms)", 1e3*(statistics.median(res["dmx"])-statistics.median(res["float"]))/210)
if len(sys.argv) > 1:
    pr = cProfile.Profile(); pr.enable()
    for _ in range(5): steps["dmx"]()
    pr.disable()
    pstats.Stats(pr).sort_stats("tottime").print_stats(35)
