import sys, time, torch
from brevitas_dmx import functional as F
from brevitas_dmx.functional import _block_scale, _binade_power, format_constants
torch.set_num_threads(2)

def fwd_current(blocks, max_exponent, max_normal, min_normal, step_factor):
    return F._forward_elements(blocks, max_exponent, max_normal, min_normal, step_factor, "floor")

def fwd_recip(blocks, max_exponent, max_normal, min_normal, step_factor):
    amax = blocks.abs().amax(dim=-1, keepdim=True).clamp_min_(1e-10)
    k = torch.floor(torch.log2(amax)) - max_exponent
    scale = torch.exp2(k); inv_scale = torch.exp2(-k)
    out = blocks * inv_scale
    power = _binade_power(out)
    step = torch.maximum(power, min_normal) * step_factor
    out = torch.round(out / step) * step
    out = torch.clamp(out, -max_normal, max_normal) * scale
    return out, scale

def fwd_recip2(blocks, max_exponent, max_normal, min_normal, step_factor):
    # reciprocal of the step from the exponent bits: 2**-j has field 254 - E
    amax = blocks.abs().amax(dim=-1, keepdim=True).clamp_min_(1e-10)
    k = torch.floor(torch.log2(amax)) - max_exponent
    scale = torch.exp2(k); inv_scale = torch.exp2(-k)
    out = blocks * inv_scale
    bits = out.view(torch.int32) & 0x7F800000
    bits = torch.maximum(bits, min_normal.view(torch.int32))
    power = bits.view(torch.float32)
    inv_power = (0x7F000000 - bits).view(torch.float32)
    step = power * step_factor
    out = torch.round(out * (inv_power / step_factor)) * step
    out = torch.clamp(out, -max_normal, max_normal) * scale
    return out, scale

VARIANTS = {"current": fwd_current, "recip": fwd_recip, "recip2": fwd_recip2}

def timeit(fn, reps=20):
    fn(); best = 1e9
    for _ in range(reps):
        t = time.perf_counter(); fn(); best = min(best, time.perf_counter() - t)
    return best

if __name__ == "__main__":
    torch.manual_seed(0)
    w = torch.randn(1536, 18, 32); w2 = torch.randn(576, 18, 32)
    c = format_constants(torch.tensor(3.3), torch.tensor(2.2))
    ci = format_constants(torch.tensor(3.0), torch.tensor(2.0))
    for dyn in (True, None):
        for name, fn in VARIANTS.items():
            comp = torch.compile(fn, dynamic=dyn)
            comp(w2, *c); comp(w, *c)
            ref = fwd_current(w, *c)[0]
            got = comp(w, *c)[0]
            diff = (ref != got).float().mean().item()
            refi = fwd_current(w, *ci)[0]; goti = comp(w, *ci)[0]
            exact_int = torch.equal(refi, goti)
            ns = min(timeit(lambda: comp(w, *c)) for _ in range(3)) / w.numel() * 1e9
            print(f"dynamic={dyn} {name}: {ns:.3f} ns/elt, frac-format mismatch {diff:.2e}, int-format exact {exact_int}")
