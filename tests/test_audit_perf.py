"""The fast audit path: layout (channels_last that really is channels_last, also with one input channel), counts that
do not depend on how images are grouped into forward passes, and hand-computed counts from the block noise."""

import numpy as np
import pytest
import torch
from torch import nn

from rurk.audit.kernel import _chunks, residual_knowledge
from rurk.audit.spec import default_batch_size
from rurk.torchutil import canonical_strides as _canonical_strides, in_format as _in_format
from rurk.perturb import block_generator, random_wrong_labels

CL = torch.channels_last


def bn_net(seed: int, cin: int = 1, classes: int = 4) -> nn.Module:
    """Conv, BatchNorm (non-trivial running statistics), max- and avg-pooling and dropout; left in train mode (the
    audit must evaluate it in eval mode)."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(cin, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.5),
        nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Dropout(0.5),
        nn.Linear(8 * 3 * 3, classes),
    )
    with torch.no_grad():
        for mod in net:
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.3, 0.3)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    return net.train()


def data(n: int, cin: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, cin, 12, 12, generator=g)
    x[:3] = (x[:3] > 0.5).float()  # pixels exactly at the bounds
    return x, torch.randint(0, 4, (n,), generator=g)


def run(m, a, x, y, probe, **kw):
    params = {"steps": 2} if probe in ("pgd", "pgd-recall") else None
    return residual_knowledge(m, a, x, y, [0.0, 0.02, 0.1], probe, draws=kw.pop("draws", 12), seed=7, bootstrap=0,
                              progress=False, probe_params=params, block_size=kw.pop("block_size", 8), **kw)


@pytest.mark.parametrize("probe,cin", [("gaussian", 1), ("gaussian", 3), ("pgd", 1), ("pgd", 3), ("pgd-recall", 1)])
def test_counts_identical_across_batch_size_and_layout(probe, cin):
    m, a = bn_net(0, cin), bn_net(1, cin)
    x, y = data(21, cin)  # 21 samples = blocks of 8, 8, 5: groups and chunks that do not divide evenly
    c = 12 if probe == "gaussian" else 4
    ref = run(m, a, x, y, probe, batch_size=7, channels_last=False, draws=c)
    assert 0 < ref.k_m.sum() < ref.k_m.size * c and (ref.d is None or ref.d[1:].any())  # not degenerate
    for bs, cl in [(7, True), (64, False), (64, True), (1000, False), (1000, True), (None, None)]:
        r = run(m, a, x, y, probe, batch_size=bs, channels_last=cl, draws=c)
        for f in ("k_m", "k_a", "d"):
            got, want = getattr(r, f), getattr(ref, f)
            assert (got is None) == (want is None)
            if got is not None:
                assert np.array_equal(got, want), (f, bs, cl)
        assert r.batch_size == (bs or default_batch_size("cpu", probe != "gaussian"))
    assert all(mod.training for mod in m.modules())  # eval mode only while the audit ran


@pytest.mark.parametrize("cin", [1, 3])
def test_convolutions_really_run_channels_last(cin):
    """With one input channel an NCHW tensor is also 'contiguous in channels_last', so .contiguous() is a no-op and
    convolution picked NCHW for the first conv and the pooling after it. The audit now hands the conv kernels
    channels_last strides (and the random probes' inputs too), so every conv output is channels_last; outside the
    audit the model is as it was."""
    m, a = bn_net(0, cin), bn_net(1, cin)
    w = m[0].weight
    before = (w.data_ptr(), w.stride())
    seen = []

    def hook(mod, inputs, output):
        seen.append((probe, inputs[0].stride(), mod.weight.stride(), output.stride(), tuple(output.shape)))

    x, y = data(5, cin)
    h = m[0].register_forward_hook(hook)
    try:
        for probe in ("gaussian", "pgd", "pgd-recall"):
            run(m, a, x, y, probe, draws=2)
    finally:
        h.remove()
    assert {s[0] for s in seen} == {"gaussian", "pgd", "pgd-recall"}
    for probe, in_stride, w_stride, out_stride, out_shape in seen:
        assert w_stride == _canonical_strides(w.shape, CL)
        assert out_stride == _canonical_strides(out_shape, CL)
        if cin > 1 or probe == "gaussian":  # crafted one-channel copies may carry either label: same memory
            assert in_stride[1] == 1  # channels_last strides, not merely 'contiguous in channels_last'
    assert (w.data_ptr(), w.stride()) == before  # kernels restored
    # with channels_last off nothing is re-strided
    seen.clear()
    h = m[0].register_forward_hook(hook)
    try:
        probe = "gaussian"
        run(m, a, x, y, probe, draws=4, channels_last=False)
    finally:
        h.remove()
    assert seen and all(ws == w.stride() for _, _, ws, _, _ in seen)


def test_in_format_views_and_copies():
    t = torch.rand(4, 1, 5, 5)
    v = _in_format(t, CL)
    assert v.data_ptr() == t.data_ptr() and v.stride() == (25, 1, 5, 1) and torch.equal(v, t)
    t3 = torch.rand(4, 3, 5, 5)
    v3 = _in_format(t3, CL)
    assert v3.stride() == _canonical_strides(t3.shape, CL) and torch.equal(v3, t3)
    assert _in_format(v3, CL) is v3
    assert _in_format(t3, torch.contiguous_format) is t3
    flat = torch.rand(4, 7)
    assert _in_format(flat, CL) is flat


def test_chunks_cover_without_small_tail():
    for n in (1, 7, 63, 64, 65, 320, 1600):
        for size in (1, 7, 64, 1000):
            b = _chunks(n, size)
            assert b[0][0] == 0 and b[-1][1] == n and all(e == s2 for (_, e), (s2, _) in zip(b, b[1:]))
            lens = [e - s for s, e in b]
            assert max(lens) <= size and max(lens) - min(lens) <= 1 or len(lens) == 1


# --------------------------------------------------------------------------------------------- hand-computed counts
class Pixel(nn.Module):
    """Two classes: class 0 iff pixel ``p`` > ``t`` (logits (x_p - t, 0); exact in float32 for these values)."""

    def __init__(self, p: int, t: float):
        super().__init__()
        self.lin = nn.Linear(144, 2)
        with torch.no_grad():
            self.lin.weight.zero_()
            self.lin.weight[0, p] = 1.0
            self.lin.bias.copy_(torch.tensor([-t, 0.0]))

    def forward(self, x):
        return self.lin(x.flatten(1))


class Constant(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(144, 4)
        with torch.no_grad():
            self.lin.weight.zero_()
            self.lin.bias.copy_(torch.tensor([0.0, 2.0, 0.0, 0.0]))

    def forward(self, x):
        return self.lin(x.flatten(1))


@pytest.mark.parametrize("probe", ["gaussian", "uniform-linf"])
def test_hand_computed_counts_from_block_noise(probe):
    """k_m, k_a, d of two one-pixel threshold classifiers, computed from the same block_generator draws."""
    n, c, block, seed, taus = 11, 9, 4, 3, [0.0, 0.05, 0.3]
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 12, 12, generator=g) * 0.8 + 0.1
    y = torch.randint(0, 2, (n,), generator=g)
    m, a = Pixel(5, 0.5), Pixel(77, 0.35)
    r = residual_knowledge(m, a, x, y, taus, probe, draws=c, seed=seed, block_size=block, bootstrap=0,
                           progress=False, batch_size=5)
    km, ka, d = (np.zeros((len(taus), n), int) for _ in range(3))
    for b in range(-(-n // block)):
        rows = list(range(b * block, min(n, (b + 1) * block)))
        gen = block_generator(seed, probe, b, "cpu")
        shape = (len(rows) * c, 1, 12, 12)
        z = torch.randn(shape, generator=gen) if probe == "gaussian" else torch.rand(shape, generator=gen) * 2 - 1
        for t, tau in enumerate(taus):
            for j, i in enumerate(rows):
                xp = (z[j * c:(j + 1) * c] * tau + x[i]).clamp(0, 1).flatten(1)
                pm = (xp[:, 5] < 0.5).long()  # class 1 iff logit0 = pixel - threshold < 0
                pa = (xp[:, 77] < 0.35).long()
                km[t, i], ka[t, i], d[t, i] = (pm == y[i]).sum(), (pa == y[i]).sum(), (pm != pa).sum()
    assert np.array_equal(r.k_m, km) and np.array_equal(r.k_a, ka) and np.array_equal(r.d, d)
    assert 0 < km[-1].sum() < n * c and d[-1].sum() > 0  # tau = 0.3 flips some copies


def test_hand_computed_fgsm():
    """Targeted FGSM on a one-pixel classifier with 2 classes: the target is 1 - y, the step moves pixel 5 by tau
    towards it, every copy is the same, so k_m = c * [x_5 -+ tau on the right side]."""
    n, c, tau = 10, 5, 0.2
    x = torch.full((n, 1, 12, 12), 0.5)
    x5 = torch.tensor([0.1, 0.4, 0.45, 0.62, 0.8, 0.1, 0.4, 0.45, 0.62, 0.8])  # none within 1e-3 of 0.5 +- 0.2
    x[:, 0, 0, 5] = x5
    y = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    m, a = Pixel(5, 0.5), Pixel(5, 0.5)
    r = residual_knowledge(m, a, x, y, [0.0, tau], "fgsm", draws=c, seed=0, bootstrap=0, progress=False)
    moved = torch.where(y == 0, x5 - tau, x5 + tau).clamp(0, 1)  # towards the target 1 - y
    pred = (moved < 0.5).long()
    assert np.array_equal(r.k_m[1], (c * (pred == y)).numpy())
    assert np.array_equal(r.k_m[0], (c * ((x5 < 0.5).long() == y)).numpy())
    assert np.array_equal(r.k_a, r.k_m) and not r.d.any()
    # with two classes the random wrong label is always 1 - y
    assert torch.equal(random_wrong_labels(y, 2, torch.Generator().manual_seed(0)), 1 - y)


@pytest.mark.parametrize("probe", ["gaussian", "uniform-l2", "fgsm", "pgd", "pgd-recall"])
def test_constant_model_counts(probe):
    x, y = data(9)
    r = run(Constant(), Constant(), x, y, probe, draws=5, batch_size=4)
    want = 5 * (y == 1).numpy()
    assert all(np.array_equal(r.k_m[t], want) and np.array_equal(r.k_a[t], want) for t in range(3))
    assert r.d is None or not r.d.any()
