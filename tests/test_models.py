"""fastconv.models: exact parameter counts, forward shapes, training steps, FC->conv, transfer helpers."""
import os

import numpy as np
import pytest

import fastconv
from fastconv import models, nn, optim
from fastconv.nn import functional as F

SLOW = os.environ.get("FASTCONV_SLOW_TESTS") == "1"
slow = pytest.mark.skipif(not SLOW, reason="large model at full size; set FASTCONV_SLOW_TESTS=1")


@pytest.fixture
def no_init(monkeypatch):
    """Skip the random initialization so building a 140M-parameter model only allocates."""
    for name in ("kaiming_uniform_", "kaiming_normal_", "uniform_", "normal_"):
        monkeypatch.setattr(nn.init, name, lambda t, *a, **k: t)


# ------------------------------------------------------ parameter counts
def _conv(cin, cout, kh, kw=None, bias=True):
    return cout * cin * kh * (kw or kh) + (cout if bias else 0)


def _fc(i, o):
    return i * o + o


def _googlenet_expected(aux):
    table = [(192, 64, 96, 128, 16, 32, 32), (256, 128, 128, 192, 32, 96, 64), (480, 192, 96, 208, 16, 48, 64),
             (512, 160, 112, 224, 24, 64, 64), (512, 128, 128, 256, 24, 64, 64), (512, 112, 144, 288, 32, 64, 64),
             (528, 256, 160, 320, 32, 128, 128), (832, 256, 160, 320, 32, 128, 128),
             (832, 384, 192, 384, 48, 128, 128)]
    n = _conv(3, 64, 7) + _conv(64, 64, 1) + _conv(64, 192, 3) + _fc(1024, 1000)
    for cin, c1, c3r, c3, c5r, c5, pp in table:
        n += _conv(cin, c1, 1) + _conv(cin, c3r, 1) + _conv(c3r, c3, 3) + _conv(cin, c5r, 1) + _conv(c5r, c5, 5)
        n += _conv(cin, pp, 1)
    if aux:
        for cin in (512, 528):
            n += _conv(cin, 128, 1) + _fc(2048, 1024) + _fc(1024, 1000)
    return n


def _cifar_resnet_expected(depth, shortcut):
    n_blocks = (depth - 2) // 6
    total = _conv(3, 16, 3, bias=False) + 32 + _fc(64, 10)
    cin = 16
    for c in (16, 32, 64):
        for _ in range(n_blocks):
            total += _conv(cin, c, 3, bias=False) + _conv(c, c, 3, bias=False) + 4 * c
            if cin != c and shortcut == "B":
                total += _conv(cin, c, 1, bias=False) + 2 * c
            cin = c
    return total


EXPECTED = {
    # stated in the issue / the papers / torchvision
    "lenet5": 61_706, "simple_cnn": 29_034, "alexnet": 62_378_344, "vgg16": 138_357_544, "vgg19": 143_667_240,
    "resnet18": 11_689_512, "resnet50": 25_557_032, "resnet152": 60_192_808, "wide_resnet50_2": 68_883_240,
    "resnet34": 21_797_672, "resnet101": 44_549_160, "vgg11": 132_863_336, "vgg13": 133_047_848,
    "inception_v3": 27_161_264,
    # derived here from the architecture tables
    "vgg11_lrn": 132_863_336,
    "zfnet": _conv(3, 96, 7) + _conv(96, 256, 5) + _conv(256, 384, 3) + _conv(384, 384, 3) + _conv(384, 256, 3)
    + _fc(9216, 4096) + _fc(4096, 4096) + _fc(4096, 1000),
    "googlenet": _googlenet_expected(True),
    "resnet20": _cifar_resnet_expected(20, "A"), "resnet56": _cifar_resnet_expected(56, "A"),
    "alphago_policy": _conv(48, 192, 5) + 11 * _conv(192, 192, 3) + 192 + 361,
}


def test_expected_table_sanity():
    assert EXPECTED["resnet20"] == 269_722 and _cifar_resnet_expected(20, "B") == 272_474  # 0.27M in the paper
    assert EXPECTED["resnet56"] == 853_018                                                  # 0.85M in the paper
    assert EXPECTED["alexnet"] == (_conv(3, 96, 11) + _conv(96, 256, 5) + _conv(256, 384, 3) + _conv(384, 384, 3)
                                   + _conv(384, 256, 3) + _fc(9216, 4096) + _fc(4096, 4096) + _fc(4096, 1000))
    assert EXPECTED["lenet5"] == _conv(1, 6, 5) + _conv(6, 16, 5) + _fc(400, 120) + _fc(120, 84) + _fc(84, 10)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameter_count(name, no_init):
    m = models.get_model(name)
    assert models.count_parameters(m) == EXPECTED[name]


def test_parameter_count_variants(no_init):
    assert models.count_parameters(models.googlenet(aux_logits=False)) == _googlenet_expected(False) == 6_998_552
    assert models.count_parameters(models.inception_v3(aux_logits=False)) == 23_834_568
    assert models.count_parameters(models.resnet20(shortcut="B")) == 272_474
    assert models.count_parameters(models.resnet18(num_classes=10)) == 11_689_512 - 513 * 990
    assert models.count_parameters(models.simple_cnn(num_classes=5, in_channels=3)) == 29_034 - 1569 * 5 + 800
    assert models.count_parameters(models.lenet5(activation="tanh", pool="avg")) == 61_706


def test_get_model_errors():
    with pytest.raises(ValueError, match="unknown model 'lenet6'"):
        models.get_model("lenet6")
    # names as papers and torchvision write them, - and _ ignored
    assert models.count_parameters(models.get_model("ResNet-20")) == models.count_parameters(models.resnet20())
    assert type(models.get_model("LeNet-5")) is type(models.lenet5())
    with pytest.raises(ValueError, match="num_classes"):
        models.simple_cnn(num_classes=0)
    with pytest.raises(ValueError, match="6n \\+ 2"):
        models.CifarResNet(21)
    with pytest.raises(ValueError, match="board_size"):
        models.alphago_policy(num_classes=360)
    assert {"lenet5", "simple_cnn", "alexnet", "googlenet", "resnet152", "alphago_policy"} <= set(models.MODELS)


# ------------------------------------------------ forward + training steps
def _train_steps(model, x, y, steps=4, lr=0.01):
    opt = optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    losses = []
    for _ in range(steps):
        out = model(fastconv.Tensor(x))
        if isinstance(out, tuple):
            loss = F.cross_entropy(out[0], y) + model.aux_loss_weight * sum(F.cross_entropy(o, y) for o in out[1:])
        else:
            loss = F.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and p.grad.shape == p.shape, name
            assert np.isfinite(p.grad).all(), name
        opt.step()
        losses.append(float(loss.item()))
    return losses


SMALL = [
    ("lenet5", dict(), (1, 32, 32), 10, 4),
    ("simple_cnn", dict(), (1, 28, 28), 10, 8),
    ("simple_cnn", dict(in_channels=3, num_classes=4), (3, 28, 28), 4, 8),
    ("resnet20", dict(), (3, 32, 32), 10, 4),
    ("resnet20", dict(shortcut="B"), (3, 16, 16), 10, 8),
]


@pytest.mark.parametrize("name,kw,shape,nc,n", SMALL, ids=[f"{s[0]}-{i}" for i, s in enumerate(SMALL)])
def test_small_models_train(name, kw, shape, nc, n, rng):
    nn.manual_seed(0)
    m = models.get_model(name, **kw)
    x = rng.random((n,) + shape, dtype=np.float32)
    y = np.arange(n) % nc
    m.eval()
    assert m(fastconv.Tensor(x)).shape == (n, nc)
    losses = _train_steps(m, x, y, steps=4)
    assert losses[-1] < losses[0], losses


def test_alphago_policy_train(rng):
    m = models.AlphaGoPolicy(48, filters=16)                 # k=16 instead of 192 to keep the test fast
    x = (rng.random((4, 48, 19, 19)) < 0.3).astype(np.float32)
    y = rng.integers(0, 361, 4)
    out = m(fastconv.Tensor(x))
    assert out.shape == (4, 361)
    p = m.move_probabilities(fastconv.Tensor(x)).data
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-5)
    losses = _train_steps(m, x, y, steps=5, lr=0.05)
    assert losses[-1] < losses[0]
    assert np.abs(m.position_bias.data).sum() > 0            # the per-position bias is learned


def test_googlenet_aux_heads(rng):
    m = models.googlenet(num_classes=5)
    x = rng.random((2, 3, 224, 224), dtype=np.float32)
    out = m(fastconv.Tensor(x))
    assert isinstance(out, tuple) and [o.shape for o in out] == [(2, 5)] * 3
    m.eval()
    assert m(fastconv.Tensor(x)).shape == (2, 5)
    losses = _train_steps(m, x, np.array([1, 3]), steps=2)
    assert losses[-1] < losses[0]


@slow
@pytest.mark.parametrize("name,shape", [("inception_v3", (3, 299, 299)), ("resnet152", (3, 64, 64)),
                                        ("alexnet", (3, 227, 227)), ("vgg11", (3, 224, 224)),
                                        ("zfnet", (3, 224, 224)), ("resnet50", (3, 64, 64)),
                                        ("wide_resnet50_2", (3, 64, 64)), ("alphago_policy", (48, 19, 19))])
def test_large_models_train(name, shape, rng):
    nc = 361 if name == "alphago_policy" else 7
    m = models.get_model(name, num_classes=nc)
    x = rng.random((2,) + shape, dtype=np.float32)
    losses = _train_steps(m, x, np.array([1, 5]), steps=3, lr=0.001)
    assert losses[-1] < losses[0]


# ---------------------------------------------------- against torch
def _torch_simple_cnn(torch):
    tnn = torch.nn
    return tnn.Sequential(tnn.Conv2d(1, 16, 5, padding=2), tnn.BatchNorm2d(16), tnn.ReLU(), tnn.MaxPool2d(2),
                          tnn.Conv2d(16, 32, 5, padding=2), tnn.BatchNorm2d(32), tnn.ReLU(), tnn.MaxPool2d(2),
                          tnn.Flatten(), tnn.Linear(1568, 10))


def _load_into_torch(torch, tmodel, ours):
    params = [p for p in ours.state_dict().values()]
    tparams = list(tmodel.state_dict().values())
    assert [tuple(a.shape) for a in params] == [tuple(b.shape) for b in tparams]
    with torch.no_grad():
        for a, b in zip(params, tparams):
            b.copy_(torch.from_numpy(np.array(a)))


def test_simple_cnn_matches_torch(torch, rng):
    m = models.simple_cnn()
    t = _torch_simple_cnn(torch)
    _load_into_torch(torch, t, m)
    x = rng.random((4, 1, 28, 28), dtype=np.float32)
    y = np.array([0, 3, 9, 3])
    out = m(fastconv.Tensor(x))
    loss = F.cross_entropy(out, y)
    loss.backward()
    tout = t(torch.from_numpy(x))
    tloss = torch.nn.functional.cross_entropy(tout, torch.from_numpy(y))
    tloss.backward()
    np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=1e-4, atol=1e-4)
    ours = [p.grad for p in m.parameters()]
    for g, tp in zip(ours, t.parameters()):
        np.testing.assert_allclose(g, tp.grad.numpy(), rtol=1e-3, atol=1e-5)


def test_resnet18_matches_torch_layout(torch, rng):
    """Our ResNet-18 with torchvision's state_dict names and order, checked against a torch
    ResNet-18 written here (BasicBlock, stride on conv1, 1x1 projection shortcuts)."""
    from torch_twins import torch_models

    TResNet = torch_models(torch)["resnet18"]

    m, t = models.resnet18(num_classes=10), TResNet()
    assert list(m.state_dict()) == list(t.state_dict())
    m.load_state_dict(t.state_dict())
    m.eval()
    t.eval()
    x = rng.random((2, 3, 40, 40), dtype=np.float32)
    np.testing.assert_allclose(m(fastconv.Tensor(x)).data, t(torch.from_numpy(x)).detach().numpy(), rtol=1e-3,
                               atol=1e-4)


# ------------------------------------------------ FC -> convolution
def test_to_fully_convolutional_lenet_windows(rng):
    m = models.lenet5()
    m.eval()
    fcn = models.to_fully_convolutional(m)
    x = rng.random((2, 1, 32, 32), dtype=np.float32)
    ref = m(fastconv.Tensor(x)).data
    got = fcn(fastconv.Tensor(x)).data
    assert got.shape == (2, 10, 1, 1)
    np.testing.assert_allclose(got[:, :, 0, 0], ref, rtol=1e-4, atol=1e-5)
    # on a larger image each map position is the classifier applied to a 32x32 window (stride 4)
    big = rng.random((1, 1, 40, 40), dtype=np.float32)
    heat = fcn(fastconv.Tensor(big)).data
    assert heat.shape == (1, 10, 3, 3)
    for i in range(3):
        for j in range(3):
            crop = big[:, :, 4 * i:4 * i + 32, 4 * j:4 * j + 32]
            np.testing.assert_allclose(heat[:, :, i, j], m(fastconv.Tensor(crop)).data, rtol=1e-4, atol=1e-5)
    assert m.classifier[1].__class__ is nn.Linear                  # the original is left alone


def test_to_fully_convolutional_simple_cnn_and_resnet(rng):
    m = models.simple_cnn()
    m.eval()
    x = rng.random((3, 1, 28, 28), dtype=np.float32)
    fcn = models.to_fully_convolutional(m)
    np.testing.assert_allclose(fcn(fastconv.Tensor(x)).data[:, :, 0, 0], m(fastconv.Tensor(x)).data, rtol=1e-4,
                               atol=1e-5)
    assert fcn(fastconv.Tensor(rng.random((1, 1, 36, 36), dtype=np.float32))).shape == (1, 10, 3, 3)
    r = models.resnet20()
    r.eval()
    x = rng.random((2, 3, 32, 32), dtype=np.float32)
    heat = models.to_fully_convolutional(r)(fastconv.Tensor(x)).data
    assert heat.shape == (2, 10, 8, 8)
    np.testing.assert_allclose(heat.mean((2, 3)), r(fastconv.Tensor(x)).data, rtol=1e-4, atol=1e-5)
    with pytest.raises(TypeError, match="neither"):
        models.to_fully_convolutional(models.AlphaGoPolicy(48, 8))


# ------------------------------------------------ transfer learning
def test_freeze_replace_head_finetune(rng):
    m = models.simple_cnn()
    assert models.freeze(m, "features") == 8
    head = models.replace_head(m, 3)
    assert m.classifier.fc is head and head.out_features == 3
    assert models.count_parameters(m, trainable_only=True) == 1568 * 3 + 3
    before = {k: v.copy() for k, v in m.state_dict().items()}
    x = rng.random((6, 1, 28, 28), dtype=np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])
    opt = optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    m.eval()                                               # frozen BN statistics too
    for _ in range(3):
        loss = F.cross_entropy(m(fastconv.Tensor(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = m.state_dict()
    for k in before:
        changed = not np.array_equal(before[k], after[k])
        assert changed == k.startswith("classifier.fc"), k
    models.unfreeze(m)
    assert models.count_parameters(m, trainable_only=True) == models.count_parameters(m)
    with pytest.raises(KeyError, match="no parameter"):
        models.freeze(m, "backbone")
