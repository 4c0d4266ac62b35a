import copy

import pytest
import torch
from torch import nn

from rurk.models import (
    MODELS,
    Classifier,
    Normalize,
    build_model,
    default_tail,
    feature_head,
    last_k_layers,
)
from rurk.models.cnn import textbook_order

# Small but non-trivial configurations (3 channels everywhere so per-channel broadcasting is exercised).
SMALL = {
    "mlp": dict(in_shape=(3, 4, 4), width=0.5),
    "smallcnn": dict(in_shape=(3, 12, 12), width=0.25),
    "tinycnn8": dict(in_shape=(3, 8, 8)),
    "resnet18": dict(in_shape=(3, 16, 16), width=0.25),
    "resnet50": dict(in_shape=(3, 32, 32), width=0.25),
    "vgg11": dict(in_shape=(3, 32, 32), width=0.25),
}
MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
C = 7


def small(arch, **kw):
    cfg = dict(SMALL[arch])
    return build_model(arch, C, cfg.pop("in_shape"), **cfg, **kw)


def batch(arch, n=3, seed=0):
    return torch.rand(n, *SMALL[arch]["in_shape"], generator=torch.Generator().manual_seed(seed))


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def leaf_layers(model, names):
    """Names of all Conv2d/Linear/BatchNorm modules inside the named submodules."""
    mods = dict(model.named_modules())
    return {f"{n}.{s}".strip(".") for n in names for s, m in mods[n].named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))}


def test_registry_is_complete():
    assert set(MODELS) == set(SMALL)


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_output_and_features(arch):
    model = small(arch).eval()
    assert isinstance(model, Classifier) and model.arch == arch
    assert isinstance(model.norm, Normalize) and isinstance(model.head, nn.Linear)
    assert list(dict(model.named_children())) == ["norm", "body", "head"]
    x = batch(arch)
    with torch.no_grad():
        out, feats = model(x), model.features(x)
        assert out.shape == (3, C) and out.dtype == torch.float32
        assert feats.shape == (3, model.head.in_features)
        assert torch.equal(model.head(feats), out)
        fn, head = feature_head(model)
        assert head is model.head and torch.equal(head(fn(x)), out)


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_normalisation_is_inside(arch):
    with_stats = small(arch, mean=MEAN, std=STD).eval()
    plain = small(arch).eval()
    state = with_stats.state_dict()
    state["norm.mean"], state["norm.std"] = plain.norm.mean, plain.norm.std
    plain.load_state_dict(state)
    x = batch(arch)
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(with_stats(x), plain((x - m) / s), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(with_stats(x), plain(x), atol=1e-3)


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_channels_last_matches_nchw(arch):
    model = small(arch, mean=MEAN, std=STD).eval()
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = batch(arch)
    with torch.no_grad():
        ref = model(x)
        out = cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_mlp_tabular_and_hidden():
    model = build_model("mlp", 3, (4,), mean=[1, 2, 3, 4], std=[1, 2, 3, 4], hidden=(100,))
    assert model.norm.mean.shape == (1, 4) and model.norm.std.shape == (1, 4)
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [100, 3]
    assert n_params(model) == 4 * 100 + 100 + 100 * 3 + 3
    assert model(torch.rand(5, 4)).shape == (5, 3)
    assert model.tail_modules() == ["body.fc1", "head"]
    assert build_model("mlp", 10, (64,), width=0.5).body.fc1.out_features == 64


def test_normalize_buffers():
    norm = Normalize.for_shape((3, 8, 8), MEAN, STD)
    assert norm.mean.shape == (1, 3, 1, 1) and norm.std.shape == (1, 3, 1, 1)
    assert set(norm.state_dict()) == {"mean", "std"}
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(norm(x)[:, 1], (x[:, 1] - 0.5) / 0.25)
    with pytest.raises(ValueError, match="in_shape"):
        Normalize.for_shape((3, 8, 8), [0.5, 0.5], None)
    with pytest.raises(ValueError, match="positive"):
        Normalize([0.0], [0.0])


@pytest.mark.parametrize("arch, num_classes, in_shape, lo, hi", [
    ("smallcnn", 10, (1, 28, 28), 421_642, 421_642),
    ("tinycnn8", 10, (1, 8, 8), 38_282, 38_282),
    ("mlp", 10, (64,), 26_122, 26_122),
    ("resnet18", 10, (3, 32, 32), 11_160_000, 11_180_000),
    ("resnet50", 100, (3, 224, 224), 23_600_000, 23_800_000),
    ("vgg11", 10, (3, 32, 32), 9_100_000, 9_300_000),
])
def test_parameter_counts(arch, num_classes, in_shape, lo, hi):
    model = build_model(arch, num_classes, in_shape)
    assert lo <= n_params(model) <= hi
    assert n_params(build_model(arch, num_classes, in_shape, width=0.5)) < 0.5 * n_params(model)


def test_parameter_names_are_stable():
    keys = set(build_model("resnet18", 10, (3, 32, 32), width=0.25).state_dict())
    for k in ["norm.mean", "norm.std", "body.conv1.weight", "body.bn1.running_mean", "body.layer1.0.conv1.weight",
              "body.layer2.0.shortcut.0.weight", "body.layer2.0.shortcut.1.weight", "body.layer4.1.bn2.bias",
              "head.weight", "head.bias"]:
        assert k in keys
    assert "body.layer1.0.shortcut.0.weight" not in keys  # identity shortcut when shape is unchanged
    keys = set(build_model("smallcnn", 10, (1, 28, 28)).state_dict())
    assert keys == {"norm.mean", "norm.std", "body.conv1.weight", "body.conv1.bias", "body.conv2.weight",
                    "body.conv2.bias", "body.fc1.weight", "body.fc1.bias", "head.weight", "head.bias"}


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_config_rebuilds(arch):
    model = small(arch, mean=MEAN, std=STD)
    again = build_model(**model.config)
    again.load_state_dict(model.state_dict())  # strict: same names and shapes
    x = batch(arch)
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x), model.eval()(x))


def test_construction_is_seeded():
    torch.manual_seed(3)
    a = small("resnet18")
    torch.manual_seed(3)
    b = small("resnet18")
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


# ---------------------------------------------------------------------------------------------------- tails

K_EQUIVALENT = {"mlp": 2, "smallcnn": 2, "tinycnn8": 2, "vgg11": 3}


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_default_tail(arch):
    model = small(arch)
    tail = default_tail(model)
    assert tail == model.tail_modules() and tail[-1] == "head"
    assert set(tail) <= set(dict(model.named_modules()))
    if arch.startswith("resnet"):
        assert tail == ["body.layer4", "head"]
    else:
        assert tail == last_k_layers(model, K_EQUIVALENT[arch])


def test_tail_specifics():
    assert small("vgg11").tail_modules() == ["body.conv7", "body.bn7", "body.conv8", "body.bn8", "head"]
    assert small("smallcnn").tail_modules() == ["body.fc1", "head"]
    assert build_model("mlp", 10, (64,)).tail_modules() == ["body.fc2", "head"]
    with pytest.raises(TypeError, match="Classifier"):
        default_tail(nn.Linear(2, 2))


def test_resnet18_reference_rule_leaves_out_layer4_0_conv1():
    model = small("resnet18")
    rule = last_k_layers(model, 5)
    assert rule == ["body.layer4.0.conv2", "body.layer4.0.bn2", "body.layer4.0.shortcut.0",
                    "body.layer4.0.shortcut.1", "body.layer4.1.conv1", "body.layer4.1.bn1",
                    "body.layer4.1.conv2", "body.layer4.1.bn2", "head"]
    assert leaf_layers(model, model.tail_modules()) - set(rule) == {"body.layer4.0.conv1", "body.layer4.0.bn1"}


def test_last_k_layers_on_sequential():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(),      # 0 1 2
                        nn.Conv2d(2, 2, 3), nn.BatchNorm2d(2), nn.ReLU(),      # 3 4 5
                        nn.Flatten(), nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))  # 6 7 8 9
    assert last_k_layers(net, 1) == ["9"]
    assert last_k_layers(net, 2) == ["7", "9"]
    assert last_k_layers(net, 3) == ["3", "4", "7", "9"]
    assert last_k_layers(net, 4) == ["0", "1", "3", "4", "7", "9"]
    with pytest.raises(ValueError, match="k=5"):
        last_k_layers(net, 5)
    with pytest.raises(ValueError):
        last_k_layers(net, 0)


# ---------------------------------------------------------------------------------------------------- reset


def _perturb(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.dtype == torch.long:
                t.fill_(5)
            else:
                t.add_(torch.rand(t.shape, generator=g) + 0.1)


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_reset_changes_exactly_the_tail(arch):
    model = small(arch)
    _perturb(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tail = model.tail_modules()
    model.reset_parameters_of(tail, generator=torch.Generator().manual_seed(0))
    after = model.state_dict()
    in_tail = {k for k in before if any(k.startswith(t + ".") for t in tail)}
    assert in_tail and "head.weight" in in_tail
    for k in before:
        if k in in_tail:
            assert (after[k] != before[k]).all(), k
        else:
            assert torch.equal(after[k], before[k]), k
    mods = dict(model.named_modules())
    for name in leaf_layers(model, tail):
        m = mods[name]
        if isinstance(m, nn.BatchNorm2d):
            assert (m.weight == 1).all() and (m.bias == 0).all()
            assert (m.running_mean == 0).all() and (m.running_var == 1).all() and m.num_batches_tracked == 0
        elif isinstance(m, nn.Conv2d) and m.bias is not None:
            assert (m.bias == 0).all()


def test_reset_is_reproducible_and_validates():
    a, b = small("resnet18"), small("resnet18")
    a.reset_parameters_of(["body.layer4", "head"], generator=torch.Generator().manual_seed(4))
    b.reset_parameters_of(["body.layer4", "head"], generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.head.weight, b.head.weight)
    assert torch.equal(a.body.layer4[0].conv1.weight, b.body.layer4[0].conv1.weight)
    b.reset_parameters_of(["head"], generator=torch.Generator().manual_seed(5))
    assert not torch.equal(a.head.weight, b.head.weight)
    with pytest.raises(ValueError, match="body.nope"):
        a.reset_parameters_of(["body.nope"])
    with pytest.raises(TypeError):
        a.reset_parameters_of("head")


def test_reset_uses_construction_init():
    model = build_model("resnet18", 10, (3, 32, 32), width=0.5)
    conv, head = model.body.layer4[0].conv1, model.head  # 128 -> 256: fan_out != fan_in
    fresh_std, fresh_bound = conv.weight.std().item(), head.weight.abs().max().item()
    _perturb(model)
    model.reset_parameters_of(model.tail_modules(), generator=torch.Generator().manual_seed(0))
    expected_std = (2.0 / (conv.out_channels * 9)) ** 0.5        # kaiming normal, fan_out, relu
    bound = 1.0 / head.in_features ** 0.5                         # PyTorch default Linear init
    for std in (fresh_std, conv.weight.std().item()):
        assert abs(std / expected_std - 1) < 0.01
    assert abs(conv.weight.mean().item()) < 0.05 * expected_std
    for b in (fresh_bound, head.weight.abs().max().item(), head.bias.abs().max().item()):
        assert 0.9 * bound < b <= bound


# ---------------------------------------------------------------------------------------------------- errors


def test_bad_arch_names_it_and_lists_registered():
    with pytest.raises(ValueError, match="resnet1000") as e:
        build_model("resnet1000", 10, (3, 32, 32))
    assert all(name in str(e.value) for name in MODELS)


@pytest.mark.parametrize("arch, in_shape", [
    ("smallcnn", (4,)), ("resnet18", (3, 32)), ("vgg11", (3, 16, 16)), ("tinycnn8", (1, 1, 1)), ("mlp", (0,)),
])
def test_bad_shape_names_arch_and_shape(arch, in_shape):
    with pytest.raises(ValueError) as e:
        build_model(arch, 10, in_shape)
    assert arch in str(e.value) and str(tuple(in_shape)) in str(e.value)


def test_feature_head_rejects_plain_modules():
    with pytest.raises(TypeError, match="Classifier"):
        feature_head(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))

    class Duck(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk, self.head = nn.Linear(4, 3), nn.Linear(3, 2)

        def features(self, x):
            return self.trunk(x)

    duck = Duck()
    fn, head = feature_head(duck)
    assert head is duck.head and fn(torch.rand(1, 4)).shape == (1, 3)


@pytest.mark.parametrize("arch, in_shape, side", [("resnet18", (3, 20, 20), 3), ("resnet50", (3, 64, 64), 2),
                                                  ("vgg11", (3, 64, 64), 2)])
def test_downsampling_and_global_average_pool(arch, in_shape, side):
    """Total stride 8 (CIFAR ResNet-18), 32 (ImageNet ResNet-50, VGG); features = spatial mean of the last map."""
    model = build_model(arch, C, in_shape, width=0.25).eval()
    x = torch.rand(2, *in_shape)
    with torch.no_grad():
        pre = model.body[:-2](model.norm(x))  # everything before pool + flatten
        assert pre.shape[-2:] == (side, side)
        torch.testing.assert_close(model.features(x), pre.mean((2, 3)))


@pytest.mark.parametrize("arch", ["smallcnn", "tinycnn8", "vgg11"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_pool_before_relu_is_the_same_function_and_gradient(arch, channels_last):
    """Each stage pools before its ReLU (faster): logits and every parameter's gradient bit-identical to
    ReLU-then-pool, in train and eval mode — including windows whose values are all negative."""
    model = small(arch, mean=MEAN, std=STD)
    ref = textbook_order(model)
    kinds = [type(m) for m in model.body.children()]
    assert any(a is nn.MaxPool2d and b is nn.ReLU for a, b in zip(kinds, kinds[1:]))  # the order is the new one
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in ref.named_parameters()]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = (batch(arch, n=4) * 2 - 0.5).contiguous(memory_format=fmt)  # values outside [0, 1]: many negative windows
    y = torch.arange(4) % C
    for mode in (True, False):
        grads = []
        for m in (model, ref):
            m.to(memory_format=fmt).train(mode).zero_grad()
            out = m(x)
            nn.functional.cross_entropy(out, y).backward()
            grads.append((out.detach(), [p.grad.clone() for p in m.parameters()]))
        assert torch.equal(grads[0][0], grads[1][0])
        assert all(torch.equal(a, b) for a, b in zip(grads[0][1], grads[1][1]))
