from variants import *
import statistics
def _static_block(*blocks):
    if torch.compiler.is_compiling():
        for b in blocks:
            torch._dynamo.mark_static(b, b.dim() - 1)
def fwd_inside(blocks, *c):
    _static_block(blocks)
    return F._forward_elements(blocks, *c)
def vb_inside(blocks, a, b, c_, scale, grad, shape):
    _static_block(blocks, grad)
    return F._values_backward_elements(blocks, a, b, c_, scale, grad, shape)
def fwd_plain(*a): return F._forward_elements(*a)
def vb_plain(*a): return F._values_backward_elements(*a)
torch.manual_seed(0)
w = torch.randn(1536, 18, 32); w2 = torch.randn(576, 18, 32); w3 = torch.randn(576, 48, 32)
c = format_constants(torch.tensor(3.3), torch.tensor(2.2))
g = torch.randn_like(w)
fns = {}
for mode in ("dyn", "inside"):
    comp = torch.compile(fwd_plain if mode == "dyn" else fwd_inside, dynamic=True)
    compb = torch.compile(vb_plain if mode == "dyn" else vb_inside, dynamic=True)
    call = (lambda comp: lambda t: comp(t, *c, "floor"))(comp)
    callb = (lambda compb: lambda t, s: compb(t, *c[1:], s, torch.ones_like(t) if t is not w else g, ()))(compb)
    for t in (w2, w3, w): call(t)
    s = call(w)[1]
    for t in (w2, w3): callb(t, call(t)[1])
    callb(w, s)
    fns[mode] = (lambda call: lambda: call(w))(call), (lambda callb, s: lambda: callb(w, s))(callb, s)
ratios = {0: [], 1: []}; raw = {(m, k): [] for m in fns for k in (0, 1)}
for r in range(25):
    for k in (0, 1):
        t = {m: timeit(fns[m][k], 5) for m in fns}
        ratios[k].append(t["inside"] / t["dyn"])
        for m in fns: raw[(m, k)].append(t[m] / w.numel() * 1e9)
for k, name in ((0, "forward"), (1, "values_backward")):
    print(name, "median ns dyn %.3f inside %.3f; median ratio inside/dyn %.3f" % (
        statistics.median(raw[("dyn", k)]), statistics.median(raw[("inside", k)]), statistics.median(ratios[k])))
