import torch, time, statistics
from brevitas_dmx import functional as F
torch.set_num_threads(2)
w = (torch.randn(1536, 18, 32) * 0.02).bfloat16(); w2 = (torch.randn(576, 18, 32) * 0.02).bfloat16()
c = F.format_constants(torch.tensor(3.3), torch.tensor(2.2))
g = torch.randn_like(w)
ks = {}
for name, opts in (("plain", {}), ("emulate", {"emulate_precision_casts": True})):
    f = torch.compile(lambda b, *a: F._forward_elements(b, *a), dynamic=True, options=opts)
    vb = torch.compile(lambda b, *a: F._values_backward_elements(b, *a), dynamic=True, options=opts)
    f(w2, *c, "floor"); s = f(w, *c, "floor")[1]
    vb(w2, *c[1:], f(w2, *c, "floor")[1], torch.ones_like(w2), ()); vb(w, *c[1:], s, g, ())
    ks[name] = (lambda f=f: f(w, *c, "floor"), lambda vb=vb, s=s: vb(w, *c[1:], s, g, ()))
def best(fn, n=5):
    b = 1e9
    for _ in range(n):
        t = time.perf_counter(); fn(); b = min(b, time.perf_counter() - t)
    return b
res = {(n, i): [] for n in ks for i in (0, 1)}
for r in range(10):
    for n in ks:
        for i in (0, 1): res[(n, i)].append(best(ks[n][i]) / w.numel() * 1e9)
for k, v in res.items(): print(k, "%.3f ns" % statistics.median(v))
