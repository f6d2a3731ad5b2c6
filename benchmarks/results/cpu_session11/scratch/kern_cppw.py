import torch, time, sys
from brevitas_dmx import functional as F
from brevitas_dmx.functional import format_constants
torch.set_num_threads(2)
c = tuple(t.detach() for t in format_constants(torch.tensor(3.3), torch.tensor(2.2)))
opts = {"cpp_wrapper": True} if sys.argv[1] == "cpp" else {}
k = torch.compile(F._linear_forward_elements, dynamic=True, options=opts)
kb = torch.compile(F._linear_backward_elements, dynamic=True, options=opts)
def bench(rows, out, inn):
    x = torch.randn(rows, inn // 32, 32); w = torch.randn(out, inn // 32, 32); g = torch.randn(rows, out)
    o, sx, sw = k(x, w, None, c, c, "floor", "floor")
    for _ in range(3): k(x, w, None, c, c, "floor", "floor"); kb(x, w, c, c, sx, sw, g)
    best = bestb = 1e9
    for r in range(7):
        t0 = time.perf_counter()
        for _ in range(200): k(x, w, None, c, c, "floor", "floor")
        best = min(best, (time.perf_counter() - t0) / 200)
        t0 = time.perf_counter()
        for _ in range(200): kb(x, w, c, c, sx, sw, g)
        bestb = min(bestb, (time.perf_counter() - t0) / 200)
    print(sys.argv[1], rows, out, inn, "forward us %.0f backward us %.0f" % (best * 1e6, bestb * 1e6))
t = time.time(); bench(32, 64, 64); bench(32, 128, 96); print("compile+bench s", time.time() - t)
