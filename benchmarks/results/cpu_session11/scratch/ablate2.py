exec(open("/tmp/ablate.py").read().split("real_f, real_b =")[0])
import time, statistics
res = {m: [] for m in ("compiled", "skip guards", "float")}
for r in range(12):
    t = time.perf_counter(); steps["dmx"](); res["compiled"].append(time.perf_counter() - t)
    with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
        t = time.perf_counter(); steps["dmx"](); res["skip guards"].append(time.perf_counter() - t)
    t = time.perf_counter(); steps["float"](); res["float"].append(time.perf_counter() - t)
fl = statistics.median(res["float"])
for m in res: print(f"{m:14s} {1e3*statistics.median(res[m]):7.1f} ms/step, over float per linear {1e3*(statistics.median(res[m])-fl)/210:.3f} ms")
