import sys, collections
sys.path.insert(0, "/work/main/benchmarks")
import torch
from torch.profiler import profile, ProfilerActivity
import bench_step as B, step_breakdown as S
from brevitas_dmx import functional
functional.enable_compile(True)
torch.manual_seed(0)
ids = torch.randint(0, 1024, (1, 256))
steps = {}
for v in ("float", "dmx"):
    m = B.quantize(B.build_float_model("smollm2-135m", 1, None, torch.float32), v)
    steps[v] = B.make_step(m, v, ids, torch.device("cpu"))[0]
    steps[v](); steps[v]()
tot = {v: collections.Counter() for v in steps}
cnt = {v: collections.Counter() for v in steps}
for r in range(2):
    for v, s in steps.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            s()
        for e in prof.key_averages():
            tot[v][e.key] += e.self_cpu_time_total / 2e6
            cnt[v][e.key] += e.count / 2
keys = set(tot["float"]) | set(tot["dmx"])
rows = sorted(keys, key=lambda k: -(tot["dmx"][k] - tot["float"][k]))
print("key | float s | dmx s | diff | count f | count d")
for k in rows[:40]:
    print(f"{k[:70]:70s} {tot['float'][k]:.4f} {tot['dmx'][k]:.4f} {tot['dmx'][k]-tot['float'][k]:+.4f} {cnt['float'][k]:.0f} {cnt['dmx'][k]:.0f}")
print("sum", sum(tot['float'].values()), sum(tot['dmx'].values()))
