"""fastconv.optim: update rules against float64 formulas written here and against torch; schedulers."""
import math

import numpy as np
import pytest

from fastconv import Tensor, optim

pytestmark = pytest.mark.filterwarnings("ignore:Detected call of")


def _param(rng, shape=(3, 4)):
    return Tensor(rng.standard_normal(shape), requires_grad=True)


def _sgd_reference(p, grads, lr, momentum, dampening, wd, nesterov):
    p, buf = p.copy(), None
    for g in grads:
        d = g + wd * p
        if momentum:
            buf = d.copy() if buf is None else momentum * buf + (1 - dampening) * d
            d = d + momentum * buf if nesterov else buf
        p = p - lr * d
    return p


@pytest.mark.parametrize("momentum,dampening,wd,nesterov", [(0, 0, 0, False), (0.9, 0, 5e-4, False),
                                                            (0.9, 0.1, 1e-2, False), (0.8, 0, 1e-3, True)])
def test_sgd_rules(rng, momentum, dampening, wd, nesterov):
    p = _param(rng)
    p0 = p.data.copy()
    grads = [rng.standard_normal(p.shape) for _ in range(4)]
    opt = optim.SGD([p], lr=0.05, momentum=momentum, dampening=dampening, weight_decay=wd, nesterov=nesterov)
    obj = p.data
    for g in grads:
        p.grad = g.copy()
        opt.step()
    assert p.data is obj  # updated in place
    np.testing.assert_allclose(p.data, _sgd_reference(p0, grads, 0.05, momentum, dampening, wd, nesterov),
                               rtol=1e-13, atol=1e-15)


def _adam_reference(p, grads, lr, b1, b2, eps, wd, decoupled, amsgrad):
    p = p.copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    vmax = np.zeros_like(p)
    for t, g in enumerate(grads, 1):
        if decoupled:
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mhat = m / (1 - b1 ** t)
        vv = np.maximum(vmax, v) if amsgrad else v
        vmax = vv
        p = p - lr * mhat / (np.sqrt(vv / (1 - b2 ** t)) + eps)
    return p


@pytest.mark.parametrize("cls,wd,amsgrad", [(optim.Adam, 0.0, False), (optim.Adam, 1e-2, True),
                                            (optim.AdamW, 1e-2, False), (optim.AdamW, 0.1, True)])
def test_adam_rules(rng, cls, wd, amsgrad):
    p = _param(rng)
    p0 = p.data.copy()
    grads = [rng.standard_normal(p.shape) for _ in range(5)]
    opt = cls([p], lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=wd, amsgrad=amsgrad)
    for g in grads:
        p.grad = g.copy()
        opt.step()
    ref = _adam_reference(p0, grads, 1e-2, 0.8, 0.99, 1e-6, wd, cls is optim.AdamW, amsgrad)
    np.testing.assert_allclose(p.data, ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name,kw", [("SGD", dict(lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True)),
                                     ("Adam", dict(lr=1e-2, weight_decay=1e-3)),
                                     ("AdamW", dict(lr=1e-2, amsgrad=True))])
def test_optimizers_match_torch(rng, torch, name, kw):
    p = _param(rng)
    tp = torch.tensor(p.data.copy(), requires_grad=True)
    opt = getattr(optim, name)([p], **kw)
    topt = getattr(torch.optim, name)([tp], **kw)
    for _ in range(4):
        g = rng.standard_normal(p.shape)
        p.grad = g.copy()
        tp.grad = torch.from_numpy(g.copy())
        opt.step()
        topt.step()
    np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_optimizer_state_dict_roundtrip_and_torch_state(rng, torch):
    p = _param(rng)
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = rng.standard_normal(p.shape)
    opt.step()
    sd = opt.state_dict()
    assert sd["param_groups"][0]["params"] == [0] and "momentum_buffer" in sd["state"][0]
    q = Tensor(p.data.copy(), requires_grad=True)
    opt2 = optim.SGD([q], lr=0.5, momentum=0.9)
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["lr"] == 0.1
    g = rng.standard_normal(p.shape)
    p.grad, q.grad = g.copy(), g.copy()
    opt.step()
    opt2.step()
    np.testing.assert_array_equal(p.data, q.data)
    # torch's optimizer state_dict (tensors) loads too
    tp = torch.tensor(rng.standard_normal((2, 2)), requires_grad=True)
    topt = torch.optim.Adam([tp], lr=1e-3)
    tp.grad = torch.ones(2, 2, dtype=torch.float64)
    topt.step()
    r = Tensor(tp.detach().numpy().copy(), requires_grad=True)
    ropt = optim.Adam([r], lr=1e-3)
    ropt.load_state_dict(topt.state_dict())
    r.grad = np.ones((2, 2))
    tp.grad = torch.ones(2, 2, dtype=torch.float64)
    ropt.step()
    topt.step()
    np.testing.assert_allclose(r.data, tp.detach().numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="parameter groups"):
        opt2.load_state_dict({"state": {}, "param_groups": []})


def test_optimizer_argument_errors(rng):
    p = _param(rng)
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="learning rate"):
        optim.Adam([p], lr=-1)
    with pytest.raises(TypeError, match="single Tensor"):
        optim.SGD(p, lr=0.1)


def _lrs(sched, opt, n):
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        sched.step()
    return out


@pytest.mark.parametrize("name,kw", [("StepLR", dict(step_size=3, gamma=0.5)),
                                     ("MultiStepLR", dict(milestones=[2, 5, 6], gamma=0.3)),
                                     ("CosineAnnealingLR", dict(T_max=7, eta_min=0.01)),
                                     ("OneCycleLR", dict(max_lr=1.0, total_steps=20)),
                                     ("OneCycleLR", dict(max_lr=0.5, total_steps=13, anneal_strategy="linear",
                                                         three_phase=True, pct_start=0.25))])
def test_schedulers_match_torch(rng, torch, name, kw):
    p = _param(rng)
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    tp = torch.zeros(1, requires_grad=True)
    topt = torch.optim.SGD([tp], lr=0.1, momentum=0.9)
    n = kw.get("total_steps", 12)
    ours = _lrs(getattr(optim, name)(opt, **kw), opt, n)
    theirs = _lrs(getattr(torch.optim.lr_scheduler, name)(topt, **kw), topt, n)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-15)
    if name == "OneCycleLR":
        assert math.isclose(opt.param_groups[0]["momentum"], topt.param_groups[0]["momentum"], rel_tol=1e-12)


def test_schedulers_closed_forms(rng):
    p = _param(rng)
    opt = optim.SGD([p], lr=1.0)
    assert _lrs(optim.StepLR(opt, 2, 0.1), opt, 5) == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    opt = optim.SGD([p], lr=1.0)
    lrs = _lrs(optim.CosineAnnealingLR(opt, T_max=4), opt, 5)
    assert lrs == pytest.approx([1, (1 + math.cos(math.pi / 4)) / 2, 0.5, (1 - math.cos(math.pi / 4)) / 2, 0])
    opt = optim.SGD([p], lr=1.0, momentum=0.9)
    oc = optim.OneCycleLR(opt, max_lr=1.0, total_steps=10)
    lrs = _lrs(oc, opt, 10)
    assert lrs[0] == pytest.approx(1 / 25) and max(lrs) == pytest.approx(1.0, rel=0.05)
    assert lrs[-1] == pytest.approx(1 / 25 / 1e4)


# ------------------------------------------------- fixes from a fuzz against torch.optim
def test_schedulers_chain_and_keep_manual_lr_changes(rng):
    # torch's recursive rules work from the group's current lr: two schedulers compose (the
    # closed forms lost StepLR's decay: 0.1, 0.1, 0.01, ...) and a hand-set lr carries on
    p = _param(rng)
    opt = optim.SGD([p], lr=0.1)
    a, b = optim.StepLR(opt, 2, 0.5), optim.MultiStepLR(opt, [3], 0.1)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        a.step()
        b.step()
    assert lrs == pytest.approx([0.1, 0.1, 0.05, 0.005, 0.0025, 0.0025], rel=1e-12)
    opt = optim.SGD([p], lr=0.1)
    s = optim.StepLR(opt, 3, 0.5)
    opt.param_groups[0]["lr"] = 1.0
    s.step()
    assert opt.param_groups[0]["lr"] == 1.0
    s.step()
    s.step()
    assert opt.param_groups[0]["lr"] == 0.5
    # alone, the recursive cosine rule stays on the closed form (also past T_max)
    opt = optim.SGD([p], lr=1.0)
    c = optim.CosineAnnealingLR(opt, T_max=5, eta_min=0.1)
    for e in range(1, 23):
        c.step()
        want = 0.1 + 0.9 * (1 + math.cos(math.pi * e / 5)) / 2
        assert opt.param_groups[0]["lr"] == pytest.approx(want, rel=1e-9, abs=1e-12), e
    # step(epoch) (deprecated, as torch) jumps by the closed form
    with pytest.warns(DeprecationWarning):
        c.step(5)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


def test_chained_schedulers_match_torch(rng, torch):
    p = _param(rng)
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    tp = torch.zeros(1, requires_grad=True)
    topt = torch.optim.SGD([tp], lr=0.1, momentum=0.9)
    ours = [optim.CosineAnnealingLR(opt, 7, 0.001), optim.MultiStepLR(opt, [3, 3, 8], 0.5)]
    theirs = [torch.optim.lr_scheduler.CosineAnnealingLR(topt, 7, 0.001),
              torch.optim.lr_scheduler.MultiStepLR(topt, [3, 3, 8], 0.5)]
    for _ in range(20):
        opt.step()
        topt.step()
        for s in ours + theirs:
            s.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(topt.param_groups[0]["lr"], rel=1e-12)


def test_onecycle_per_group_momentum_and_lengths(rng):
    p, q = _param(rng), _param(rng)
    opt = optim.SGD([{"params": [p]}, {"params": [q]}], lr=0.1, momentum=0.9)
    sched = optim.OneCycleLR(opt, [1.0, 2.0], total_steps=10, base_momentum=[0.8, 0.85], max_momentum=[0.9, 0.95])
    assert [g["momentum"] for g in opt.param_groups] == [0.9, 0.95]
    for _ in range(3):
        sched.step()
    m0, m1 = (g["momentum"] for g in opt.param_groups)
    assert 0.8 <= m0 < 0.9 and 0.85 <= m1 < 0.95
    with pytest.raises(ValueError, match="expected 2 values for max_lr"):
        optim.OneCycleLR(optim.SGD([{"params": [p]}, {"params": [q]}], lr=0.1), [1.0], total_steps=10)


def test_loaded_step_count_stays_an_int():
    # torch keeps Adam's step as a 0-d float tensor; for a 0-d parameter that has the parameter's
    # shape and was cast to the parameter's dtype (float16: the count stuck at 2048)
    p = Tensor(np.array(1.0, np.float16), requires_grad=True)
    opt = optim.Adam([p])
    p.grad = np.array(0.5, np.float16)
    opt.step()
    sd = opt.state_dict()
    sd["state"][0]["step"] = np.array(3000.0, np.float32)  # as torch stores it
    opt2 = optim.Adam([p])
    opt2.load_state_dict(sd)
    st = opt2.state[id(p)]
    assert st["step"] == 3000 and isinstance(st["step"], int)
    assert st["exp_avg"].dtype == np.float16


def test_onecycle_argument_errors(rng):
    p = _param(rng)
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    for kw in (dict(total_steps=10.0), dict(total_steps=0), dict(epochs=2.5, steps_per_epoch=4),
               dict(epochs=2, steps_per_epoch=True), dict(total_steps=10, pct_start="0.3")):
        with pytest.raises(ValueError, match="OneCycleLR"):
            optim.OneCycleLR(opt, 1.0, **kw)
    with pytest.raises(ValueError, match="max_lr.*load the optimizer"):
        optim.OneCycleLR(optim.SGD([p], lr=0.1, momentum=0.9), 1.0, total_steps=10, last_epoch=3)


def test_later_scheduler_keeps_initial_lr_and_cosine_resume(rng):
    # torch sets initial_lr only where it is missing: a scheduler made after another one keeps
    # the first one's starting lr (was overwritten by the current lr: 0.25 for 1.0)
    p = _param(rng)
    opt = optim.SGD([p], lr=1.0)
    s = optim.StepLR(opt, 2, 0.5)
    for _ in range(4):
        s.step()
    c = optim.CosineAnnealingLR(opt, T_max=3)
    assert c.base_lrs == [1.0] and opt.param_groups[0]["initial_lr"] == 1.0
    lrs = []
    for _ in range(6):
        c.step()
        lrs.append(opt.param_groups[0]["lr"])
    # torch's recursion from 0.25: x1.5/2, x0.5/1.5, x0/0.5, then at e = T+1 it adds
    # (base_lr - eta_min) * (1 - cos(pi/T)) / 2 = 0.25 (0.0625 with the overwritten base 0.25)
    assert lrs == pytest.approx([0.1875, 0.0625, 0.0, 0.25, 0.75, 1.0], rel=1e-12, abs=1e-15)
    # resuming with last_epoch keeps the current lr at construction (torch 2.13), then continues
    opt = optim.SGD([p], lr=0.3)
    opt.param_groups[0]["initial_lr"] = 1.0
    c = optim.CosineAnnealingLR(opt, T_max=4, eta_min=0.01, last_epoch=5)
    assert opt.param_groups[0]["lr"] == 0.3
    with pytest.raises(ValueError, match="initial_lr"):
        optim.StepLR(optim.SGD([p], lr=0.1), 2, last_epoch=3)


def test_late_scheduler_matches_torch(rng, torch):
    p, tp = _param(rng), torch.zeros(1, requires_grad=True)
    opt, topt = optim.SGD([p], lr=1.0), torch.optim.SGD([tp], lr=1.0)
    a, ta = optim.StepLR(opt, 2, 0.5), torch.optim.lr_scheduler.StepLR(topt, 2, 0.5)
    for _ in range(4):
        opt.step()
        topt.step()
        a.step()
        ta.step()
    c, tc = optim.CosineAnnealingLR(opt, T_max=3), torch.optim.lr_scheduler.CosineAnnealingLR(topt, T_max=3)
    for _ in range(8):
        opt.step()
        topt.step()
        c.step()
        tc.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(topt.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
