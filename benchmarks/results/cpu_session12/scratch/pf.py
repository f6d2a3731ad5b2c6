import resource, sys, time, statistics, os
sys.path.insert(0, "/work/main/benchmarks")
import torch
import bench_step as B
from brevitas_dmx.functional import enable_compile
torch.manual_seed(0)
tokens = int(sys.argv[1]) if len(sys.argv) > 1 else 256
dev = torch.device("cpu")
ids = torch.randint(0, 49152, (1, tokens))
steps = {}
for v in ("float", "dmx"):
    m = B.quantize(B.build_float_model("smollm2-135m", 1, None, torch.float32), v)
    if v == "dmx":
        enable_compile(True)
    steps[v] = B.make_step(m, v, ids, dev)[0]
    steps[v](); steps[v]()
res = {v: [] for v in steps}
for r in range(int(os.environ.get("ROUNDS", 5))):
    for v, s in steps.items():
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = time.perf_counter(); s(); t = time.perf_counter() - t
        f1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        res[v].append((t, f1 - f0))
for v, l in res.items():
    print(v, "median s %.3f" % statistics.median(x[0] for x in l), "faults/step", statistics.median(x[1] for x in l))
print("ratio %.3f" % (statistics.median(x[0] for x in res["dmx"]) / statistics.median(x[0] for x in res["float"])))
