import time, statistics, torch
torch.set_num_threads(2)
n = 1536 * 576 * 8  # 8 weights of SmolLM2's MLP shape, 28 MiB each tensor: out of cache
a = torch.randn(n); b = torch.empty(n); c = torch.randn(n)
def t(f, r=15):
    f(); xs = []
    for _ in range(r):
        s = time.perf_counter(); f(); xs.append(time.perf_counter() - s)
    return statistics.median(xs)
copy = t(lambda: b.copy_(a))            # read 4 B + write 4 B per element
add = t(lambda: torch.add(a, c, out=b))  # read 8 B + write 4 B
red = t(lambda: a.sum())                 # read 4 B
print(f"copy {8*n/copy/1e9:.1f} GB/s ({copy/n*1e9:.2f} ns/elem), add {12*n/add/1e9:.1f} GB/s ({add/n*1e9:.2f} ns/elem), sum {4*n/red/1e9:.1f} GB/s")
