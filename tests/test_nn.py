"""fastconv.nn: functional gradients, modules, init, summary, state_dict, torch parity.

Every functional op is gradient-checked in float64 with random upstream gradients
(fastconv.autograd.gradcheck); forward values of the autograd wrappers are compared
with torch where it is installed (visible skips otherwise) and, for the parts written
here (pad, summary arithmetic), with float64 references written in this file.
"""
import math

import numpy as np
import pytest

from fastconv import Tensor, nn
from fastconv.autograd import gradcheck
from fastconv.nn import functional as F

try:  # the pooling/layer ops are separate modules; these tests need them
    from fastconv.ops import layers as _layers  # noqa: F401
    from fastconv.ops import pool as _pool  # noqa: F401
    HAVE_OPS = True
except ImportError:  # pragma: no cover
    HAVE_OPS = False
needs_ops = pytest.mark.skipif(not HAVE_OPS, reason="fastconv.ops.pool / fastconv.ops.layers not available")


def t64(rng, *shape, lo=None):
    a = rng.standard_normal(shape) if lo is None else rng.uniform(lo, lo + 1.0, shape)
    return Tensor(a, requires_grad=True)


# name, builder(rng) -> (fn, inputs), torch equivalent (fn over torch tensors) or None
def _cases():
    c = {}
    c["conv2d"] = (lambda r: (lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1, dilation=1, groups=2),
                              [t64(r, 2, 4, 7, 6), t64(r, 6, 2, 3, 3), t64(r, 6)]),
                   lambda tF, x, w, b: tF.conv2d(x, w, b, stride=2, padding=1, groups=2))
    c["conv2d_same_dil"] = (lambda r: (lambda x, w: F.conv2d(x, w, None, padding="same", dilation=2),
                                       [t64(r, 1, 3, 6, 7), t64(r, 4, 3, 3, 3)]),
                            lambda tF, x, w: tF.conv2d(x, w, None, padding="same", dilation=2))
    c["max_pool2d"] = (lambda r: (lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True), [t64(r, 2, 3, 7, 8)]),
                       lambda tF, x: tF.max_pool2d(x, 3, 2, 1, ceil_mode=True))
    c["max_pool2d_dil"] = (lambda r: (lambda x: F.max_pool2d(x, 2, 1, 0, dilation=2), [t64(r, 1, 2, 6, 6)]),
                           lambda tF, x: tF.max_pool2d(x, 2, 1, 0, dilation=2))
    c["min_pool2d"] = (lambda r: (lambda x: F.min_pool2d(x, 2), [t64(r, 2, 3, 6, 5)]),
                       lambda tF, x: -tF.max_pool2d(-x, 2))
    c["avg_pool2d"] = (lambda r: (lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
                                  [t64(r, 2, 3, 7, 6)]),
                       lambda tF, x: tF.avg_pool2d(x, 3, 2, 1, count_include_pad=False))
    c["avg_pool2d_div"] = (lambda r: (lambda x: F.avg_pool2d(x, 2, ceil_mode=True, divisor_override=3),
                                      [t64(r, 1, 2, 5, 5)]),
                           lambda tF, x: tF.avg_pool2d(x, 2, ceil_mode=True, divisor_override=3))
    c["lp_pool2d"] = (lambda r: (lambda x: F.lp_pool2d(x, 2, 2), [t64(r, 2, 3, 6, 6, lo=0.5)]),
                      lambda tF, x: tF.lp_pool2d(x, 2, 2))
    c["adaptive_avg_pool2d"] = (lambda r: (lambda x: F.adaptive_avg_pool2d(x, (3, 2)), [t64(r, 2, 3, 7, 5)]),
                                lambda tF, x: tF.adaptive_avg_pool2d(x, (3, 2)))
    c["adaptive_max_pool2d"] = (lambda r: (lambda x: F.adaptive_max_pool2d(x, 3), [t64(r, 2, 3, 7, 5)]),
                                lambda tF, x: tF.adaptive_max_pool2d(x, 3))
    c["batch_norm_train"] = (lambda r: (lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
                                        [t64(r, 3, 4, 3, 2), t64(r, 4), t64(r, 4)]),
                             lambda tF, x, w, b: tF.batch_norm(x, None, None, w, b, training=True))
    rm, rv = np.linspace(-1, 1, 4), np.linspace(0.5, 2, 4)
    c["batch_norm_eval"] = (lambda r: (lambda x, w, b: F.batch_norm(x, rm, rv, w, b, training=False),
                                       [t64(r, 3, 4, 3, 2), t64(r, 4), t64(r, 4)]),
                            lambda tF, x, w, b: tF.batch_norm(x, _tt(rm), _tt(rv), w, b, training=False))
    c["local_response_norm"] = (lambda r: (lambda x: F.local_response_norm(x, 3, 1e-2, 0.75, 2.0),
                                           [t64(r, 2, 5, 3, 3)]),
                                lambda tF, x: tF.local_response_norm(x, 3, 1e-2, 0.75, 2.0))
    c["relu"] = (lambda r: (F.relu, [t64(r, 3, 4)]), lambda tF, x: tF.relu(x))
    c["sigmoid"] = (lambda r: (F.sigmoid, [t64(r, 3, 4)]), lambda tF, x: tF.sigmoid(x))
    c["tanh"] = (lambda r: (F.tanh, [t64(r, 3, 4)]), lambda tF, x: tF.tanh(x))
    c["softmax"] = (lambda r: (lambda x: F.softmax(x, 1), [t64(r, 3, 4, 2)]), lambda tF, x: tF.softmax(x, 1))
    c["log_softmax"] = (lambda r: (lambda x: F.log_softmax(x, -1), [t64(r, 3, 4)]),
                        lambda tF, x: tF.log_softmax(x, -1))
    c["linear"] = (lambda r: (F.linear, [t64(r, 2, 3, 5), t64(r, 4, 5), t64(r, 4)]),
                   lambda tF, x, w, b: tF.linear(x, w, b))
    tgt = np.array([0, 3, 1, 2, 3])
    c["cross_entropy"] = (lambda r: (lambda z: F.cross_entropy(z, tgt), [t64(r, 5, 4)]),
                          lambda tF, z: tF.cross_entropy(z, _tt(tgt)))
    c["cross_entropy_smooth_sum"] = (
        lambda r: (lambda z: F.cross_entropy(z, tgt, reduction="sum", label_smoothing=0.2), [t64(r, 5, 4)]),
        lambda tF, z: tF.cross_entropy(z, _tt(tgt), reduction="sum", label_smoothing=0.2))
    c["cross_entropy_none"] = (lambda r: (lambda z: F.cross_entropy(z, tgt, reduction="none"), [t64(r, 5, 4)]),
                               lambda tF, z: tF.cross_entropy(z, _tt(tgt), reduction="none"))
    c["mse_loss"] = (lambda r: (F.mse_loss, [t64(r, 3, 4), t64(r, 3, 4)]), lambda tF, a, b: tF.mse_loss(a, b))
    c["flatten"] = (lambda r: (lambda x: F.flatten(x, 1), [t64(r, 2, 3, 4)]), lambda tF, x: x.flatten(1))
    for mode in ("constant", "reflect", "replicate", "circular"):
        c[f"pad_{mode}"] = (lambda r, m=mode: (lambda x: F.pad(x, (2, 1, 1, 3), mode=m), [t64(r, 2, 3, 4, 5)]),
                            lambda tF, x, m=mode: tF.pad(x, (2, 1, 1, 3), mode=m))
    return c


def _tt(a):
    import torch

    return torch.from_numpy(np.asarray(a))


CASES = _cases()


@needs_ops
@pytest.mark.parametrize("name", sorted(CASES))
def test_functional_gradcheck(name, rng):
    fn, inputs = CASES[name][0](rng)
    gradcheck(fn, inputs, n_directions=3, seed=int(rng.integers(1 << 30)))


@needs_ops
@pytest.mark.parametrize("name", sorted(CASES))
def test_functional_matches_torch(name, rng, torch):
    """Forward values and gradients (random upstream gradient) of each wrapper equal torch's."""
    fn, inputs = CASES[name][0](rng)
    tfn = CASES[name][1]
    out = fn(*inputs)
    gy = rng.standard_normal(out.shape)
    out.backward(gy)
    tin = [torch.tensor(t.data, requires_grad=True) for t in inputs]
    tout = tfn(torch.nn.functional, *tin)
    tout.backward(torch.from_numpy(gy))
    np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=1e-10, atol=1e-12)
    for t, tt in zip(inputs, tin):
        np.testing.assert_allclose(t.grad, tt.grad.numpy(), rtol=1e-9, atol=1e-11)


def _pad_reference(x, pads, mode):
    """float64 loops: padded[..., i, j] = x[..., src(i), src(j)] (the index map written out)."""
    H, W = x.shape[-2:]
    (left, right, top, bottom) = pads

    def src(i, n):
        if 0 <= i < n:
            return i
        if mode == "reflect":
            return -i if i < 0 else 2 * (n - 1) - i
        if mode == "replicate":
            return 0 if i < 0 else n - 1
        if mode == "circular":
            return i % n
        return None

    out = np.zeros(x.shape[:-2] + (H + top + bottom, W + left + right))
    for i in range(out.shape[-2]):
        for j in range(out.shape[-1]):
            si, sj = src(i - top, H), src(j - left, W)
            if si is not None and sj is not None:
                out[..., i, j] = x[..., si, sj]
    return out


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate", "circular"])
def test_pad_reference(rng, mode):
    x = rng.standard_normal((2, 3, 4, 5))
    pads = (2, 1, 3, 0)
    y = F.pad(Tensor(x), pads, mode=mode)
    np.testing.assert_array_equal(y.data, _pad_reference(x, pads, mode))
    gradcheck(lambda a: F.pad(a, pads, mode=mode), [Tensor(x, requires_grad=True)])


def test_pad_errors():
    x = Tensor(np.zeros((1, 1, 3, 3)))
    with pytest.raises(ValueError, match="reflect padding"):
        F.pad(x, (3, 0), mode="reflect")
    with pytest.raises(ValueError, match="mode"):
        F.pad(x, (1, 1), mode="mirror")
    with pytest.raises(ValueError, match="even-length"):
        F.pad(x, (1,))


# ----------------------------------------------------------------- modules
@needs_ops
@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_conv2d_padding_modes_vs_torch(rng, torch, mode):
    m = nn.Conv2d(3, 4, 3, stride=2, padding=(1, 2), padding_mode=mode, generator=1).double()
    tm = torch.nn.Conv2d(3, 4, 3, stride=2, padding=(1, 2), padding_mode=mode).double()
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()})
    x = rng.standard_normal((2, 3, 7, 8))
    xt = Tensor(x, requires_grad=True)
    y = m(xt)
    gy = rng.standard_normal(y.shape)
    y.backward(gy)
    xtt = torch.tensor(x, requires_grad=True)
    yt = tm(xtt)
    yt.backward(torch.from_numpy(gy))
    np.testing.assert_allclose(y.data, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(xt.grad, xtt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(m.weight.grad, tm.weight.grad.numpy(), rtol=1e-10, atol=1e-12)
    gradcheck(lambda a: m(a), [Tensor(x[:1], requires_grad=True)])


def test_conv2d_default_init_bounds_and_determinism():
    m = nn.Conv2d(16, 32, 3, generator=np.random.default_rng(5))
    fan_in = 16 * 9
    bound = 1 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)) gives gain*sqrt(3/fan_in) = 1/sqrt(fan_in)
    w, b = m.weight.data, m.bias.data
    assert w.dtype == np.float32 and np.abs(w).max() <= bound and np.abs(b).max() <= bound
    assert np.abs(w).max() > 0.95 * bound  # actually spread over the whole interval
    assert abs(w.std() - bound / math.sqrt(3)) < 0.05 * bound  # U(-B, B) has std B/sqrt(3)
    m2 = nn.Conv2d(16, 32, 3, generator=np.random.default_rng(5))
    np.testing.assert_array_equal(m2.weight.data, w)
    nn.manual_seed(3)
    a = nn.Linear(10, 4).weight.data.copy()
    nn.manual_seed(3)
    np.testing.assert_array_equal(nn.Linear(10, 4).weight.data, a)
    assert not np.array_equal(nn.Linear(10, 4).weight.data, a)
    lin = nn.Linear(10, 4, generator=0)
    assert np.abs(lin.weight.data).max() <= 1 / math.sqrt(10) and np.abs(lin.bias.data).max() <= 1 / math.sqrt(10)


def test_module_shape_errors_name_layer_and_shapes():
    conv = nn.Conv2d(3, 8, 3)
    with pytest.raises(ValueError, match=r"Conv2d\(3, 8.*\(N, 3, H, W\).*\(2, 4, 8, 8\)"):
        conv(Tensor(np.zeros((2, 4, 8, 8), np.float32)))
    with pytest.raises(ValueError, match=r"Linear\(in_features=5.*\(\*, 5\).*\(2, 6\)"):
        nn.Linear(5, 2)(Tensor(np.zeros((2, 6), np.float32)))
    with pytest.raises(ValueError, match=r"BatchNorm2d\(4.*\(N, 4, H, W\).*\(2, 3, 5, 5\)"):
        nn.BatchNorm2d(4)(Tensor(np.zeros((2, 3, 5, 5), np.float32)))
    with pytest.raises(ValueError, match=r"MaxPool2d.*\(5, 5\)"):
        nn.MaxPool2d(2)(Tensor(np.zeros((5, 5), np.float32)))
    with pytest.raises(ValueError, match="divisible by groups"):
        nn.Conv2d(3, 8, 3, groups=2)
    with pytest.raises(ValueError, match="padding_mode"):
        nn.Conv2d(3, 8, 3, padding_mode="mirror")
    with pytest.raises(TypeError, match="in_channels"):
        nn.Conv2d(3.0, 8, 3)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4, 2)
        self.shared = self.head  # the same module twice: its parameters are listed once

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


@needs_ops
def test_module_api():
    net = _Net()
    names = [n for n, _ in net.named_parameters()]
    assert names == ["features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias",
                     "head.weight", "head.bias"]
    assert len(list(net.parameters())) == 6
    assert [type(m).__name__ for m in net.children()] == ["Sequential", "Linear"]
    assert len(list(net.modules())) == 6
    sd = net.state_dict()
    assert list(sd) == names[:4] + ["features.1.running_mean", "features.1.running_var",
                                    "features.1.num_batches_tracked"] + names[4:]  # torch's order
    assert net.training and net.eval() is net and not net.features[1].training
    net.train()
    out = net(Tensor(np.ones((2, 1, 4, 4), np.float32)))
    out.sum().backward()
    assert net.head.weight.grad is not None
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    r = repr(net)
    assert "(features): Sequential(" in r and "(0): Conv2d(1, 4, kernel_size=(3, 3)" in r


def test_load_state_dict_errors_and_copy():
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    w_obj = b.weight.data
    b.load_state_dict(a.state_dict())
    assert b.weight.data is w_obj  # copied into the existing array (optimizer references stay valid)
    np.testing.assert_array_equal(b.weight.data, a.weight.data)
    with pytest.raises(nn.StateDictError, match="missing keys.*bias"):
        b.load_state_dict({"weight": a.weight.data})
    with pytest.raises(ValueError, match=r"size mismatch for weight.*\(2, 4\).*\(2, 3\)"):
        b.load_state_dict({"weight": np.zeros((2, 4)), "bias": np.zeros(2)})
    res = b.load_state_dict({"weight": np.ones((2, 3)), "extra": np.ones(1)}, strict=False)
    assert res.missing_keys == ["bias"] and res.unexpected_keys == ["extra"]
    assert b.weight.dtype == np.float32 and (b.weight.data == 1).all()


@needs_ops
def test_batchnorm2d_running_stats_vs_torch(rng, torch):
    for momentum in (0.1, None):
        m = nn.BatchNorm2d(3, momentum=momentum).double()
        tm = torch.nn.BatchNorm2d(3, momentum=momentum).double()
        for _ in range(3):
            x = rng.standard_normal((4, 3, 5, 5)) * 2 + 1
            np.testing.assert_allclose(m(Tensor(x)).data, tm(torch.from_numpy(x)).detach().numpy(), rtol=1e-10,
                                       atol=1e-12)
        np.testing.assert_allclose(m.running_mean.data, tm.running_mean.numpy(), rtol=1e-12)
        np.testing.assert_allclose(m.running_var.data, tm.running_var.numpy(), rtol=1e-12)
        assert int(m.num_batches_tracked.data) == 3
        m.eval()
        tm.eval()
        x = rng.standard_normal((2, 3, 4, 4))
        np.testing.assert_allclose(m(Tensor(x)).data, tm(torch.from_numpy(x)).detach().numpy(), rtol=1e-10)
    nt = nn.BatchNorm2d(3, affine=False, track_running_stats=False).double()
    nt.eval()
    x = rng.standard_normal((4, 3, 2, 2))
    y = nt(Tensor(x)).data
    np.testing.assert_allclose(y.mean((0, 2, 3)), 0, atol=1e-12)  # batch statistics even in eval
    assert "running_mean" not in nt.state_dict()


@needs_ops
def test_batchnorm2d_trains_on_an_empty_batch():
    """An empty batch in training (torch: an empty output, running statistics untouched, zero weight
    and bias gradients) goes through the module and its backward without an error."""
    m = nn.BatchNorm2d(3)
    m.running_mean.data[...] = 0.5
    x = Tensor(np.zeros((0, 3, 4, 4), np.float32), requires_grad=True)
    y = m(x)
    assert y.shape == (0, 3, 4, 4)
    (y * 2).sum().backward()
    assert x.grad.shape == (0, 3, 4, 4)
    np.testing.assert_array_equal(m.weight.grad, 0.0)
    np.testing.assert_array_equal(m.bias.grad, 0.0)
    np.testing.assert_array_equal(m.running_mean.data, 0.5)
    np.testing.assert_array_equal(m.running_var.data, 1.0)


@needs_ops
def test_dropout_module(rng):
    x = Tensor(np.ones((200, 50), np.float32), requires_grad=True)
    d = nn.Dropout(0.3, generator=7)
    y = d(x)
    kept = y.data != 0
    assert 0.6 < kept.mean() < 0.8
    np.testing.assert_allclose(y.data[kept], 1 / 0.7, rtol=1e-6)
    y.backward(np.full(y.shape, 2.0, np.float32))
    np.testing.assert_allclose(x.grad, np.where(kept, 2 / 0.7, 0), rtol=1e-6)
    np.testing.assert_array_equal(nn.Dropout(0.3, generator=7)(x).data, y.data)  # seeded: same mask
    d.eval()
    assert d(x) is x


# ----------------------------------------------------------------- summary
@needs_ops
def test_summary_seed_002_keras_network():
    """The Keras network of seed 002 (channels-first here): 257,162 parameters, layer by layer."""
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding="same"), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding="same"), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding="same"), nn.ReLU(), nn.Flatten(),
        nn.Linear(3136, 64), nn.ReLU(), nn.Linear(64, 10), nn.Softmax(dim=1))
    lines = []
    s = model.summary((1, 28, 28), print_fn=lines.append)
    assert s.total_params == 257_162 and s.trainable_params == 257_162 and s.non_trainable_params == 0
    by_type = [(r.type, r.output_shape[1:], r.params) for r in s.rows if r.params or "Pool" in r.type]
    assert by_type == [("Conv2d", (32, 28, 28), 320), ("MaxPool2d", (32, 14, 14), 0),
                       ("Conv2d", (64, 14, 14), 18_496), ("MaxPool2d", (64, 7, 7), 0),
                       ("Conv2d", (64, 7, 7), 36_928), ("Linear", (64,), 200_768), ("Linear", (10,), 650)]
    conv1 = s.rows[0]
    assert conv1.mult_adds == 32 * 28 * 28 * 9 and conv1.activations == 32 * 28 * 28
    assert conv1.activation_bytes == 4 * 32 * 28 * 28
    text = lines[0]
    assert "Total params: 257,162" in text and "0 (Conv2d)" in text and "(None, 32, 28, 28)" in text


def _vgg16():
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    layers, c = [], 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1, generator=0), nn.ReLU(inplace=True)]
            c = v
    layers += [nn.Flatten(), nn.Linear(512 * 7 * 7, 4096, generator=0), nn.ReLU(inplace=True),
               nn.Linear(4096, 4096, generator=0), nn.ReLU(inplace=True), nn.Linear(4096, 1000, generator=0)]
    return nn.Sequential(*layers)


@needs_ops
def test_summary_vgg16_figures():
    """VGG-16 (seed 002's slide): 138M parameters and the per-layer activation counts.

    The slide's per-layer "memory" lines (input 150K, 3.2M, 3.2M, 800K, ...) sum to
    15,237,608 values; its headline "24M" (93 MB) is not the sum of its own lines, so
    the test asserts the lines and their true sum (the conv+ReLU pair counts once, as
    on the slide, because ReLU(inplace=True) allocates nothing).
    """
    s = _vgg16().summary((3, 224, 224), print_fn=None)
    assert s.total_params == 138_357_544
    acts = [r.activations for r in s.rows if r.activations]
    assert acts[:4] == [224 * 224 * 64, 224 * 224 * 64, 112 * 112 * 64, 112 * 112 * 128]
    slide_lines = ([150_528] + [3_211_264] * 2 + [802_816] + [1_605_632] * 2 + [401_408] + [802_816] * 3
                   + [200_704] + [401_408] * 3 + [100_352] + [100_352] * 3 + [25_088] + [4096, 4096, 1000])
    # Flatten re-counts the last pool's 25,088 values as its own output: subtract it to match the slide
    flat = next(r.activations for r in s.rows if r.type == "Flatten")
    assert s.total_activations - flat == sum(slide_lines) == 15_237_608
    assert s.rows[0].mult_adds == 224 * 224 * 64 * 27
    assert abs(s.total_mult_adds - 15.47e9) / 15.47e9 < 0.01  # the well-known ~15.5 GMACs of VGG-16


# ----------------------------------------------------------- torch parity
class _Mixed(nn.Module):
    """conv, batch norm, ReLU, max pool, separable (depthwise + pointwise) convs, avg pool, 1x1 conv,
    adaptive pool, linear."""

    def __init__(self):
        super().__init__()
        mod = nn
        self.body = mod.Sequential(
            mod.Conv2d(3, 8, 3, padding=1, bias=False), mod.BatchNorm2d(8), mod.ReLU(), mod.MaxPool2d(2),
            mod.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), mod.Conv2d(8, 16, 1, bias=False), mod.BatchNorm2d(16),
            mod.ReLU(), mod.Conv2d(16, 16, (1, 3), padding=(0, 1), groups=4), mod.AvgPool2d(2),
            mod.Conv2d(16, 12, 1), mod.ReLU(), mod.AdaptiveAvgPool2d((2, 2)), mod.Flatten(), mod.Linear(48, 10))

    def forward(self, x):
        return self.body(x)


@needs_ops
def test_one_sgd_step_matches_torch(rng, torch):
    """Same network in fastconv and torch, same weights (convs feeding a batch norm have no bias, as
    usual: that bias's true gradient is 0 and only rounding noise would be compared): one SGD step (momentum, weight decay, 2nd step
    uses the momentum buffer) gives the same loss, gradients and updated weights (rel err < 1e-4)."""
    net = _Mixed()
    tnet = torch.nn.Module()
    tnet.body = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), torch.nn.Conv2d(8, 16, 1, bias=False),
        torch.nn.BatchNorm2d(16), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, (1, 3), padding=(0, 1), groups=4),
        torch.nn.AvgPool2d(2), torch.nn.Conv2d(16, 12, 1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d((2, 2)),
        torch.nn.Flatten(), torch.nn.Linear(48, 10))
    net.load_state_dict(tnet.state_dict())  # torch tensors, same key names
    opt = __import__("fastconv").optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    topt = torch.optim.SGD(tnet.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

    def rel(a, b):
        return np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)

    for step in range(2):
        x = rng.standard_normal((6, 3, 12, 12)).astype(np.float32)
        y = rng.integers(0, 10, 6)
        opt.zero_grad()
        topt.zero_grad()
        loss = F.cross_entropy(net(Tensor(x)), y)
        tloss = torch.nn.functional.cross_entropy(tnet.body(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        tloss.backward()
        assert rel(loss.data, tloss.detach().numpy()) < 1e-4
        tparams = dict(tnet.named_parameters())
        for name, p in net.named_parameters():
            assert rel(p.grad, tparams[name].grad.numpy()) < 1e-4, (step, name)
        opt.step()
        topt.step()
        tsd = tnet.state_dict()
        for name, v in net.state_dict().items():
            assert rel(np.asarray(v, np.float64), tsd[name].numpy().astype(np.float64)) < 1e-4, (step, name)


@pytest.mark.parametrize("fn", ["max_pool2d", "min_pool2d"])
def test_maxpool_without_grad_takes_values_only_path(fn, monkeypatch):
    # no_grad, a constant input, or a Tensor that does not require grad: the values-only kernel
    # (the recorded Function, which asks for indices, is not run); the values are those of the
    # recorded path, and nothing is recorded
    from fastconv.autograd import no_grad
    f = getattr(F, fn)
    x = np.random.default_rng(4).standard_normal((2, 3, 28, 28)).astype(np.float32)
    t = Tensor(x.copy(), requires_grad=True)
    y = f(t, 3, 2, 1)
    assert y.requires_grad
    recorded = F._MaxPool.apply

    def refuse(*args, **kwargs):
        raise AssertionError("the indices path ran where no backward can run")

    monkeypatch.setattr(F._MaxPool, "apply", refuse)
    with no_grad():
        y_ng = f(t, 3, 2, 1)
    y_const = f(Tensor(x), 3, 2, 1)
    y_arr = f(x, 3, 2, 1)
    monkeypatch.setattr(F._MaxPool, "apply", recorded)
    for other in (y_ng, y_const, y_arr):
        assert isinstance(other, Tensor) and not other.requires_grad
        np.testing.assert_array_equal(other.data, y.data)
    with no_grad():
        y_i, idx = f(t, 3, 2, 1, return_indices=True)       # indices asked for: still given
    np.testing.assert_array_equal(y_i.data, y.data)
    assert idx.data.dtype == np.int64 and idx.shape == y.shape
    g = np.random.default_rng(5).standard_normal(y.shape).astype(np.float32)
    y.backward(Tensor(g))
    from fastconv.ops import pool as P
    want = (P.max_pool2d_backward if fn == "max_pool2d" else P.min_pool2d_backward)(g, x, 3, 2, 1)
    np.testing.assert_array_equal(t.grad.data if isinstance(t.grad, Tensor) else t.grad, want)


# ------------------------------------------------------ fixes from a fuzz against torch.nn
@needs_ops
@pytest.mark.parametrize("is_min", [False, True])
def test_max_pool_backward_with_windows_only_in_padding(rng, is_min):
    # dilation 2 and padding 1 on a one-row input: every window's taps miss the image. The output
    # is -inf (+inf for min) with torch's initial, out-of-plane index; backward raised on those
    # indices. Now they send no gradient. A second case: dilated windows with taps in the image.
    pool = nn.MinPool2d if is_min else nn.MaxPool2d
    x = Tensor(np.arange(3.0).reshape(1, 1, 1, 3), requires_grad=True)
    y = pool((2, 1), stride=1, padding=(1, 0), dilation=(2, 1))(x)
    assert np.all(np.isinf(y.data))
    y.backward(np.ones(y.shape))
    np.testing.assert_array_equal(x.grad, np.zeros((1, 1, 1, 3)))
    xv = rng.standard_normal((2, 3, 3, 6))
    x = Tensor(xv.copy(), requires_grad=True)
    y = pool(3, stride=1, padding=1, dilation=2)(x)
    g = rng.standard_normal(y.shape)
    y.backward(g)
    # reference: each finite output sends its gradient to the first extreme tap in its window
    want = np.zeros_like(xv)
    sgn = -1.0 if is_min else 1.0
    for n, c, i, j in np.ndindex(*y.shape):
        best, arg = -np.inf, None
        for di in range(3):
            for dj in range(3):
                r, s = i - 1 + 2 * di, j - 1 + 2 * dj
                if 0 <= r < 3 and 0 <= s < 6 and sgn * xv[n, c, r, s] > best:
                    best, arg = sgn * xv[n, c, r, s], (r, s)
        if arg is not None:
            want[n, c, arg[0], arg[1]] += g[n, c, i, j]
    np.testing.assert_allclose(x.grad, want, rtol=1e-12, atol=1e-12)


def test_flatten_dims_out_of_range_raise():
    x = Tensor(np.zeros((2, 3, 4)))
    for f in (lambda: nn.Flatten(start_dim=3)(x), lambda: nn.Flatten(1, -4)(x), lambda: F.flatten(x, 0, 5),
              lambda: nn.Flatten()(Tensor(np.zeros(5)))):
        with pytest.raises(IndexError, match="out of range"):
            f()
    assert nn.Flatten()(x).shape == (2, 12) and F.flatten(x, -2).shape == (2, 12)


@needs_ops
def test_softmax_implicit_dim_follows_torch(rng):
    for shape, dim in (((5,), 0), ((2, 3), 1), ((2, 3, 4), 0), ((2, 3, 4, 5), 1)):
        x = Tensor(rng.standard_normal(shape))
        with pytest.warns(UserWarning, match="Implicit dimension"):
            y = F.softmax(x)
        np.testing.assert_array_equal(y.data, F.softmax(x, dim).data)
        with pytest.warns(UserWarning, match="Implicit dimension"):
            z = nn.LogSoftmax()(x)
        np.testing.assert_array_equal(z.data, F.log_softmax(x, dim).data)


@needs_ops
def test_local_response_norm_module_takes_any_rank_from_3(rng):
    x = rng.standard_normal((2, 6, 3, 4, 2))
    got = nn.LocalResponseNorm(3)(Tensor(x)).data
    np.testing.assert_array_equal(got, F.local_response_norm(Tensor(x), 3).data)
    with pytest.raises(ValueError, match="3 or more"):
        nn.LocalResponseNorm(3)(Tensor(rng.standard_normal((2, 6))))


@needs_ops
def test_cross_entropy_takes_torch_positional_order(rng):
    z = Tensor(rng.standard_normal((4, 3)))
    t = np.array([0, 2, -1, 1])
    masked = F.cross_entropy(z, t, ignore_index=-1).data
    # torch's order: (weight, size_average, ignore_index, reduce, reduction, label_smoothing)
    assert nn.CrossEntropyLoss(None, None, -1)(z, t).data == masked
    assert F.cross_entropy(z, t, None, None, -1).data == masked
    with pytest.warns(UserWarning, match="deprecated"):
        summed = F.cross_entropy(z, t, None, False, -1)  # size_average=False: the sum
    assert summed.data == pytest.approx(F.cross_entropy(z, t, ignore_index=-1, reduction="sum").data, rel=1e-12)
    with pytest.warns(UserWarning, match="deprecated"):
        assert nn.CrossEntropyLoss(reduce=False, ignore_index=-1)(z, t).shape == (4,)
    w = np.array([0.5, 1.0, 2.0])  # a torch-style CrossEntropyLoss(w) read w as ignore_index
    assert nn.CrossEntropyLoss(w, None, -1)(z, t).data == F.cross_entropy(z, t, w, ignore_index=-1).data


def test_argument_errors_of_losses_and_pad():
    x = Tensor(np.zeros((2, 3)))
    with pytest.raises(TypeError, match="target must be a Tensor or an array"):
        F.mse_loss(x, [[1, 2, 3], [4, 5, 6]])
    with pytest.raises(ValueError, match="does not take a value"):
        F.pad(x, (1, 1), mode="reflect", value=1.5)
    assert F.pad(x, (1, 1), mode="reflect").shape == (2, 5)


def test_batch_norm_state_dict_without_num_batches_tracked(rng):
    bn = nn.BatchNorm2d(3)
    sd = {k: v for k, v in bn.state_dict().items() if not k.endswith("num_batches_tracked")}
    sd["running_mean"] = rng.standard_normal(3).astype(np.float32)
    bn.load_state_dict(sd)  # strict: torch accepts checkpoints older than the buffer, so does this
    np.testing.assert_array_equal(bn.running_mean.data, sd["running_mean"])
    assert int(bn.num_batches_tracked.data) == 0
    with pytest.raises(ValueError, match="missing keys"):
        bn.load_state_dict({"weight": np.ones(3, np.float32)})


def test_reprs_name_torch_fields():
    assert "padding=valid" in repr(nn.Conv2d(1, 2, 3, padding="valid"))
    assert "ceil_mode=False" in repr(nn.LPPool2d(2, 3))
    assert "inplace=False" in repr(nn.Dropout(0.2))


def _ce_reference(z, t, w, eps, ignore, reduction):
    """float64 cross-entropy by loops: z (M, C) logits, t (M,) indices or (M, C) probabilities."""
    M, C = z.shape
    w = np.ones(C) if w is None else w
    logp = z - z.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    loss, den = np.zeros(M), 0.0
    for i in range(M):
        if t.ndim == 2:
            q = t[i] * (1 - eps) + eps / C
            loss[i] = -sum(w[c] * q[c] * logp[i, c] for c in range(C))
            den += 1
        elif t[i] != ignore:
            loss[i] = -(1 - eps) * w[t[i]] * logp[i, t[i]] - eps / C * sum(w[c] * logp[i, c] for c in range(C))
            den += w[t[i]]
    return {"none": loss, "sum": loss.sum(), "mean": loss.sum() / den}[reduction]


def _ce_case(rng, kind, spatial):
    N, C = 4, 5
    eps = [0.0, 0.2][int(rng.integers(2))]
    z = rng.standard_normal((N, C) + spatial)
    w = rng.uniform(0.2, 2.0, C) if kind.startswith("weighted") else None
    if kind.endswith("probs"):
        t = np.moveaxis(rng.dirichlet(np.ones(C), (N,) + spatial), -1, 1)
    else:
        t = rng.integers(0, C, (N,) + spatial)
        t.reshape(-1)[::3] = -1  # ignored positions
    return z, t, w, eps


_CE_KINDS = ["index", "weighted", "probs", "weighted_probs"]


@needs_ops
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kind", _CE_KINDS)
@pytest.mark.parametrize("spatial", [(), (3,), (2, 3)])
def test_cross_entropy_weights_probabilities_and_kdim(rng, reduction, kind, spatial):
    z, t, w, eps = _ce_case(rng, kind, spatial)
    ig = -100 if kind.endswith("probs") else -1  # torch takes no ignore_index with probabilities
    C = z.shape[1]
    x = Tensor(z.copy(), requires_grad=True)
    loss = F.cross_entropy(x, t, w, ignore_index=ig, reduction=reduction, label_smoothing=eps)
    z2 = np.moveaxis(z, 1, -1).reshape(-1, C)  # the reference works on rows, classes last
    t2 = np.moveaxis(t, 1, -1).reshape(-1, C) if t.dtype.kind == "f" else t.reshape(-1)
    want = _ce_reference(z2, t2, w, eps, ig, reduction)
    if reduction == "none":
        want = want.reshape((z.shape[0],) + spatial)
    np.testing.assert_allclose(loss.data, want, rtol=1e-12, atol=1e-14)
    gradcheck(lambda a: F.cross_entropy(a, t, w, ignore_index=ig, reduction=reduction, label_smoothing=eps), [x])


@needs_ops
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("kind", _CE_KINDS)
def test_cross_entropy_forms_match_torch(rng, torch, reduction, kind):
    z, t, w, eps = _ce_case(rng, kind, (2, 3))
    ig = -100 if kind.endswith("probs") else -1
    x = Tensor(z.copy(), requires_grad=True)
    loss = F.cross_entropy(x, t, w, ignore_index=ig, reduction=reduction, label_smoothing=eps)
    tz = torch.tensor(z, requires_grad=True)
    tl = torch.nn.functional.cross_entropy(tz, torch.from_numpy(t), None if w is None else torch.from_numpy(w),
                                           ignore_index=ig, reduction=reduction, label_smoothing=eps)
    np.testing.assert_allclose(loss.data, tl.detach().numpy(), rtol=1e-12, atol=1e-14)
    g = rng.standard_normal(loss.shape)
    loss.backward(g)
    tl.backward(torch.from_numpy(np.asarray(g)))
    np.testing.assert_allclose(x.grad, tz.grad.numpy(), rtol=1e-10, atol=1e-13)


@needs_ops
def test_cross_entropy_unbatched_and_module_weight(rng):
    z, t = rng.standard_normal(4), np.array(2)
    got = F.cross_entropy(Tensor(z), t, reduction="none")
    assert got.shape == () and float(got.data) == pytest.approx(_ce_reference(z[None], t[None], None, 0, -100,
                                                                               "sum"), rel=1e-12)
    w = rng.uniform(0.5, 1.5, 4)
    m = nn.CrossEntropyLoss(w, label_smoothing=0.1)
    assert "weight" in m.state_dict()
    zz, tt = rng.standard_normal((6, 4)), rng.integers(0, 4, 6)
    assert float(m(Tensor(zz), tt).data) == pytest.approx(_ce_reference(zz, tt, w, 0.1, -100, "mean"), rel=1e-12)
    with pytest.raises(ValueError, match=r"weight must be a real array of shape \(4,\)"):
        F.cross_entropy(Tensor(zz), tt, np.ones(3))
    with pytest.raises(ValueError, match=r"target has shape \(6, 2\), expected \(6,\)"):
        F.cross_entropy(Tensor(zz), np.zeros((6, 2), np.int64))
    with pytest.raises(ValueError, match="out of range"):
        F.cross_entropy(Tensor(zz), np.full(6, 4), w)
    with pytest.raises(ValueError, match="ignore_index is not supported"):  # torch refuses it too
        F.cross_entropy(Tensor(zz), np.full((6, 4), 0.25), ignore_index=1)


@needs_ops
def test_cross_entropy_every_target_ignored_gives_nan_and_zero_gradients(rng):
    z = Tensor(rng.standard_normal((3, 4)), requires_grad=True)
    t = np.full(3, -1)
    for w in (None, np.array([1.0, 2.0, 0.5, 1.0])):
        z.grad = None
        loss = F.cross_entropy(z, t, w, ignore_index=-1, label_smoothing=0.1)
        assert np.isnan(loss.data)
        loss.backward()
        np.testing.assert_array_equal(z.grad, np.zeros((3, 4)))  # torch's zeros (NaN before, weighted)
