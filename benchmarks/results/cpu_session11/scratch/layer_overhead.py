import time, statistics, torch
import brevitas_dmx as dmx
from brevitas_dmx import functional as F
from brevitas_dmx.core.linear import DMXQuantLinear
from brevitas_dmx.quant import DMXFloatWeight, DMXFloatAct
torch.set_num_threads(2)
F.enable_compile(True)
torch.manual_seed(0)
layer = DMXQuantLinear(64, 64, bias=False, weight_quant=DMXFloatWeight, input_quant=DMXFloatAct, return_quant_tensor=False)
dmx.train_only_offsets(layer); layer.train()
lin = torch.nn.Linear(64, 64, bias=False); lin.weight.requires_grad_(False)
x = torch.randn(1, 32, 64, requires_grad=True)
c = tuple(t.detach() for t in F.format_constants(torch.tensor(3.3), torch.tensor(2.2)))
xb = x.detach().view(32, 2, 32); wb = lin.weight.detach().view(64, 2, 32); g = torch.randn(32, 64)
def step_dmx():
    with dmx.batched_formats(layer):
        layer(x).sum().backward()
def step_dmx_nobatch():
    layer(x).sum().backward()
def step_float():
    lin(x).sum().backward()
def kernels():
    o, sx, sw = F.linear_forward_kernel(xb, wb, None, c, c, "floor", "floor")
    F.linear_backward_kernel(xb, wb, c, c, sx, sw, g)
def batch_only():
    with dmx.batched_formats(layer):
        pass
fns = dict(float=step_float, dmx=step_dmx, dmx_nobatch=step_dmx_nobatch, kernels=kernels, batch_only=batch_only)
for f in fns.values():
    for _ in range(5): f()
res = {k: [] for k in fns}
for r in range(15):
    for k, f in fns.items():
        t = time.perf_counter()
        for _ in range(50): f()
        res[k].append((time.perf_counter() - t) / 50 * 1e6)
for k in res: print(f"{k:12s} {statistics.median(res[k]):7.0f} us")
import cProfile, pstats
pr = cProfile.Profile(); pr.enable()
for _ in range(200): step_dmx_nobatch()
pr.disable()
pstats.Stats(pr).sort_stats("tottime").print_stats(30)
