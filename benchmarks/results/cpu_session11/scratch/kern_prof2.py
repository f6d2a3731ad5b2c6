import torch
from brevitas_dmx import functional as F
from torch.profiler import profile, ProfilerActivity
torch.set_num_threads(2)
c = tuple(t.detach() for t in F.format_constants(torch.tensor(3.3), torch.tensor(2.2)))
x = torch.randn(32, 2, 32); w = torch.randn(64, 2, 32); g = torch.randn(32, 64)
F.enable_compile(True)
o, sx, sw = F.linear_forward_kernel(x, w, None, c, c, "floor", "floor")
for _ in range(5): F.linear_backward_kernel(x, w, c, c, sx, sw, g)
with profile(activities=[ProfilerActivity.CPU]) as p:
    for _ in range(200): F.linear_backward_kernel(x, w, c, c, sx, sw, g)
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))
