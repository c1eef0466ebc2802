"""Optimizers with torch's update rules (single-tensor, non-foreach variants).

Updates are written in place into ``param.data`` (so the arrays referenced by a
module, a state_dict or a checkpoint stay the same objects) and bump the
parameter's version, so a graph that saved a parameter before the step refuses
to backward through the stale value.
"""
from __future__ import annotations

import math

import numpy as np

from ..autograd import Tensor, array_module

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]


def _as_array(v):
    if isinstance(v, Tensor):
        return v.data
    if hasattr(v, "detach") and hasattr(v, "numpy"):  # torch tensor
        return v.detach().cpu().numpy()
    return v


class Optimizer:
    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self.param_groups = []
        self.state = {}
        if isinstance(params, Tensor):
            raise TypeError("params must be an iterable of Tensors or of dicts, got a single Tensor")
        groups = list(params)
        if not groups:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            self.add_param_group(g)

    def add_param_group(self, group):
        g = dict(group)
        params = g["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for i, p in enumerate(params):
            if not isinstance(p, Tensor):
                raise TypeError(f"{type(self).__name__}: parameter {i} is a {type(p).__name__}, not a Tensor")
            if not p.is_leaf:
                raise ValueError(f"{type(self).__name__}: can't optimize a non-leaf Tensor (shape {p.shape})")
        seen = {id(p) for grp in self.param_groups for p in grp["params"]}
        if any(id(p) in seen for p in params):
            raise ValueError("some parameters appear in more than one parameter group")
        for k, v in self.defaults.items():
            g.setdefault(k, v)
        g["params"] = params
        self.param_groups.append(g)

    def zero_grad(self, set_to_none=True):
        for g in self.param_groups:
            for p in g["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad[...] = 0

    def step(self):  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def _write(p, new):
        p.data[...] = new
        p._version.value += 1

    # -- state
    def state_dict(self):
        """torch's layout: ``{'state': {index: {...}}, 'param_groups': [{..., 'params': [index, ...]}]}``."""
        index, groups, k = {}, [], 0
        for g in self.param_groups:
            ids = []
            for p in g["params"]:
                index[id(p)] = k
                ids.append(k)
                k += 1
            groups.append({**{n: v for n, v in g.items() if n != "params"}, "params": ids})
        state = {}
        for g in self.param_groups:
            for p in g["params"]:
                if id(p) in self.state:
                    state[index[id(p)]] = dict(self.state[id(p)])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Load a state_dict from :meth:`state_dict`, :func:`fastconv.load` or torch (tensors become arrays)."""
        if not isinstance(state_dict, dict) or "param_groups" not in state_dict or "state" not in state_dict:
            raise ValueError(f"{type(self).__name__}.load_state_dict: expected a dict with 'state' and "
                             f"'param_groups', got {type(state_dict).__name__}")
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"loaded state dict has {len(groups)} parameter groups, the optimizer has "
                             f"{len(self.param_groups)}")
        mapping = {}
        for i, (saved, own) in enumerate(zip(groups, self.param_groups)):
            if len(saved["params"]) != len(own["params"]):
                raise ValueError(f"parameter group {i}: the loaded state has {len(saved['params'])} parameters, "
                                 f"the optimizer has {len(own['params'])}")
            for idx, p in zip(saved["params"], own["params"]):
                mapping[int(idx)] = p
        new_state = {}
        for idx, st in state_dict["state"].items():
            idx = int(idx)
            if idx not in mapping:
                raise ValueError(f"loaded state refers to parameter {idx}, which the optimizer does not have")
            p = mapping[idx]
            xp = array_module(p.data)
            ent = {}
            for k, v in st.items():
                v = _as_array(v)
                if k == "step":  # a count (torch keeps a 0-d float tensor): never in the parameter's dtype
                    v = int(v.item() if hasattr(v, "item") else v)
                elif hasattr(v, "shape") and tuple(v.shape) == tuple(p.shape):
                    v = xp.array(np.asarray(v) if xp is not np else v, dtype=p.data.dtype)
                elif hasattr(v, "shape") and v.ndim == 0:
                    v = v.item()
                ent[k] = v
            new_state[id(p)] = ent
        self.state = new_state
        for saved, own in zip(groups, self.param_groups):
            for k, v in saved.items():
                if k != "params":
                    own[k] = tuple(v) if k == "betas" else v

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(g):
                if k != "params":
                    lines.append(f"    {k}: {g[k]}")
        return "\n".join(lines + [")"])


class SGD(Optimizer):
    """Stochastic gradient descent with torch's momentum / dampening / nesterov / weight decay rules."""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                 maximize=False):
        if lr < 0:
            raise ValueError(f"SGD: invalid learning rate lr={lr}")
        if momentum < 0:
            raise ValueError(f"SGD: invalid momentum={momentum}")
        if weight_decay < 0:
            raise ValueError(f"SGD: invalid weight_decay={weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: nesterov momentum requires a momentum > 0 and zero dampening")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize))

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for g in self.param_groups:
            lr, mom, damp, wd = g["lr"], g["momentum"], g["dampening"], g["weight_decay"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                d = -p.grad if g["maximize"] else p.grad
                if wd != 0:
                    d = d + wd * p.data
                if mom != 0:
                    st = self.state.setdefault(id(p), {})
                    buf = st.get("momentum_buffer")
                    if buf is None:
                        buf = st["momentum_buffer"] = array_module(d).array(d, copy=True)
                    else:
                        buf *= mom
                        buf += (1 - damp) * d
                    d = d + mom * buf if g["nesterov"] else buf
                self._write(p, p.data - lr * d)
        return loss


class Adam(Optimizer):
    """Adam (torch's rule: L2 weight decay added to the gradient; ``amsgrad`` optional)."""

    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
                 maximize=False):
        if lr < 0:
            raise ValueError(f"{type(self).__name__}: invalid learning rate lr={lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"{type(self).__name__}: invalid betas={betas}")
        if eps < 0 or weight_decay < 0:
            raise ValueError(f"{type(self).__name__}: invalid eps={eps} or weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize))

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for g in self.param_groups:
            lr, (b1, b2), eps, wd = g["lr"], g["betas"], g["eps"], g["weight_decay"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                xp = array_module(p.data)
                grad = -p.grad if g["maximize"] else p.grad
                st = self.state.setdefault(id(p), {})
                if not st:
                    st["step"] = 0
                    st["exp_avg"] = xp.zeros_like(p.data)
                    st["exp_avg_sq"] = xp.zeros_like(p.data)
                    if g["amsgrad"]:
                        st["max_exp_avg_sq"] = xp.zeros_like(p.data)
                st["step"] += 1
                t = st["step"]
                param = p.data
                if wd != 0:
                    if self._decoupled:
                        param = param * (1 - lr * wd)
                    else:
                        grad = grad + wd * param
                m, v = st["exp_avg"], st["exp_avg_sq"]
                m += (1 - b1) * (grad - m)
                v *= b2
                v += (1 - b2) * grad * grad
                bc1 = 1 - b1 ** t
                bc2_sqrt = math.sqrt(1 - b2 ** t)
                if g["amsgrad"]:
                    mx = st["max_exp_avg_sq"]
                    xp.maximum(mx, v, out=mx)
                    denom = xp.sqrt(mx) / bc2_sqrt + eps
                else:
                    denom = xp.sqrt(v) / bc2_sqrt + eps
                self._write(p, param - (lr / bc1) * (m / denom))
        return loss


class AdamW(Adam):
    """Adam with decoupled weight decay (``param *= 1 - lr * weight_decay`` before the Adam step)."""

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                 maximize=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize)
