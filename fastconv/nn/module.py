"""``Module`` and ``Parameter`` (torch.nn's shape), containers, and ``Module.summary``."""
from __future__ import annotations

from collections import OrderedDict, namedtuple

import numpy as np

from ..autograd import Tensor, array_module, no_grad

__all__ = ["Parameter", "Module", "Sequential", "ModuleList", "StateDictError", "Summary"]


class Parameter(Tensor):
    """A Tensor that a Module registers as a learnable parameter (requires grad by default)."""

    def __init__(self, data, requires_grad=True):
        if isinstance(data, Tensor):
            data = data.data
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


class StateDictError(ValueError, RuntimeError):
    """A state_dict that does not fit the module (a ValueError; a RuntimeError as in torch)."""


_IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


def _to_array(value, key):
    """A torch tensor, fastconv Tensor or array-like as an array."""
    if isinstance(value, Tensor):
        return value.data
    if hasattr(value, "detach") and hasattr(value, "cpu") and hasattr(value, "numpy"):  # a torch.Tensor
        return value.detach().cpu().numpy()
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return value
    try:
        return np.asarray(value)
    except Exception as exc:  # noqa: BLE001
        raise TypeError(f"load_state_dict: value for {key!r} is not an array: {type(value).__name__}") from exc


class _HookHandle:
    def __init__(self, hooks, key):
        self.hooks, self.key = hooks, key

    def remove(self):
        self.hooks.pop(self.key, None)


class Module:
    """Base class of every layer; attributes that are Parameters/Modules are registered."""

    _hook_id = 0

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_forward_hooks", OrderedDict())
        object.__setattr__(self, "training", True)

    # -- registration
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"cannot assign {name!r} before Module.__init__() is called")
        params, bufs, mods = self._parameters, self._buffers, self._modules
        if isinstance(value, Parameter):
            bufs.pop(name, None)
            mods.pop(name, None)
            self.__dict__.pop(name, None)
            params[name] = value
        elif isinstance(value, Module):
            params.pop(name, None)
            bufs.pop(name, None)
            self.__dict__.pop(name, None)
            mods[name] = value
        elif name in params:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} as parameter {name!r} "
                                "(a Parameter or None is required)")
            params[name] = None
        elif name in bufs:
            bufs[name] = value if value is None or isinstance(value, Tensor) else Tensor(value)
        elif name in mods:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} as child module {name!r}")
            mods[name] = None
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            if store in d and name in d[store]:
                return d[store][name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute {name!r}")

    def __delattr__(self, name):
        for store in (self._parameters, self._buffers, self._modules):
            if name in store:
                del store[name]
                return
        object.__delattr__(self, name)

    def register_parameter(self, name, param):
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter: {name!r} must be a Parameter or None, got {type(param).__name__}")
        self._parameters[name] = param

    def register_buffer(self, name, tensor, persistent=True):
        if tensor is not None and not isinstance(tensor, Tensor):
            tensor = Tensor(tensor)
        self._buffers[name] = tensor
        if persistent:
            self._non_persistent.discard(name)
        else:
            self._non_persistent.add(name)

    def add_module(self, name, module):
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module: {name!r} must be a Module, got {type(module).__name__}")
        self._modules[name] = module

    register_module = add_module

    # -- calling
    def forward(self, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} has no forward()")

    def __call__(self, *args, **kwargs):
        out = self.forward(*args, **kwargs)
        for hook in list(self._forward_hooks.values()):
            r = hook(self, args, out)
            if r is not None:
                out = r
        return out

    def register_forward_hook(self, hook):
        Module._hook_id += 1
        self._forward_hooks[Module._hook_id] = hook
        return _HookHandle(self._forward_hooks, Module._hook_id)

    # -- traversal
    def named_modules(self, memo=None, prefix=""):
        memo = set() if memo is None else memo
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, m in self._modules.items():
            if m is not None:
                yield from m.named_modules(memo, f"{prefix}.{name}" if prefix else name)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        seen = set()
        for name, m in self._modules.items():
            if m is not None and id(m) not in seen:
                seen.add(id(m))
                yield name, m

    def children(self):
        for _, m in self.named_children():
            yield m

    def _named_members(self, store, prefix, recurse):
        seen = set()
        mods = self.named_modules(prefix=prefix) if recurse else [(prefix, self)]
        for mprefix, m in mods:
            for name, v in getattr(m, store).items():
                if v is None or id(v) in seen:
                    continue
                seen.add(id(v))
                yield (f"{mprefix}.{name}" if mprefix else name), v

    def named_parameters(self, prefix="", recurse=True):
        yield from self._named_members("_parameters", prefix, recurse)

    def parameters(self, recurse=True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix="", recurse=True):
        yield from self._named_members("_buffers", prefix, recurse)

    def buffers(self, recurse=True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def apply(self, fn):
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    # -- modes and grads
    def train(self, mode=True):
        if not isinstance(mode, bool):
            raise TypeError(f"train(): mode must be a bool, got {mode!r}")
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def requires_grad_(self, requires_grad=True):
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none=True):
        for p in self.parameters():
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad[...] = 0

    def to(self, dtype):
        """Cast every floating-point parameter and buffer to ``dtype`` (in place on the module)."""
        dt = np.dtype(dtype)
        for t in list(self.parameters()) + list(self.buffers()):
            if np.dtype(t.dtype).kind == "f":
                t.data = t.data.astype(dt)
                t._version.value += 1
                if t.grad is not None:
                    t.grad = t.grad.astype(dt)
        return self

    def float(self):
        return self.to(np.float32)

    def double(self):
        return self.to(np.float64)

    # -- state
    def state_dict(self, prefix=""):
        """Parameters and persistent buffers by dotted name, as the arrays themselves."""
        out = OrderedDict()
        for mprefix, m in self.named_modules(prefix=prefix.rstrip(".")):
            for name, p in m._parameters.items():
                if p is not None:
                    out[f"{mprefix}.{name}" if mprefix else name] = p.data
            for name, b in m._buffers.items():
                if b is not None and name not in m._non_persistent:
                    out[f"{mprefix}.{name}" if mprefix else name] = b.data
        return out

    def _state_tensors(self):
        out = OrderedDict()
        for mprefix, m in self.named_modules():
            for name, p in m._parameters.items():
                if p is not None:
                    out[f"{mprefix}.{name}" if mprefix else name] = p
            for name, b in m._buffers.items():
                if b is not None and name not in m._non_persistent:
                    out[f"{mprefix}.{name}" if mprefix else name] = b
        return out

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays (or torch tensors, or fastconv Tensors) into the parameters and buffers by name."""
        if not hasattr(state_dict, "items"):
            raise TypeError(f"load_state_dict: expected a mapping, got {type(state_dict).__name__}")
        own = self._state_tensors()
        # batch norm's num_batches_tracked may be absent (checkpoints older than the buffer): torch
        # keeps the module's own value then, and so does this
        missing = [k for k in own if k not in state_dict and k.rsplit(".", 1)[-1] != "num_batches_tracked"]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise StateDictError(f"Error(s) in loading state_dict for {type(self).__name__}: "
                                 f"missing keys {missing}, unexpected keys {unexpected}")
        values = {}
        for k, t in own.items():
            if k not in state_dict:
                continue
            v = _to_array(state_dict[k], k)
            if tuple(v.shape) != tuple(t.shape):
                raise StateDictError(f"size mismatch for {k}: the checkpoint has shape {tuple(v.shape)}, the "
                                     f"module {type(self).__name__} has shape {tuple(t.shape)}")
            values[k] = v
        with no_grad():
            for k, v in values.items():
                t = own[k]
                xp = array_module(t.data)
                t.data[...] = xp.asarray(np.asarray(v) if xp is not np else v).astype(t.data.dtype, copy=False)
                t._version.value += 1
        return _IncompatibleKeys(missing, unexpected)

    # -- repr
    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = []
        for name, m in self._modules.items():
            body = repr(m).replace("\n", "\n  ")
            lines.append(f"({name}): {body}")
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"

    # -- summary
    def _mult_adds(self, inputs, output):
        return 0

    def summary(self, input_shape, batch_size=1, dtype=np.float32, print_fn=print):
        """Keras-style table: layer, output shape, params, multiply-adds, activation memory; with totals.

        ``input_shape`` excludes the batch dim (e.g. ``(1, 28, 28)``). A zero input of
        ``batch_size`` samples is run in eval mode under no_grad (the training flags are
        restored after). Activations count the input plus every leaf layer's output,
        except in-place layers (``ReLU(inplace=True)``), which reuse their input's memory.
        """
        shape = (int(batch_size),) + tuple(int(s) for s in input_shape)
        names = {id(m): (n or type(self).__name__) for n, m in self.named_modules()}
        rows = []

        def hook(m, inputs, out):
            o = out[0] if isinstance(out, tuple) else out
            if not isinstance(o, Tensor):
                return
            own = sum(int(p.data.size) for p in m.parameters(recurse=False))
            trainable = sum(int(p.data.size) for p in m.parameters(recurse=False) if p.requires_grad)
            inplace = bool(getattr(m, "inplace", False))
            values = 0 if inplace else int(o.data.size)
            rows.append(SummaryRow(names[id(m)], type(m).__name__, tuple(o.shape), own, trainable,
                                   int(m._mult_adds(inputs, o)), values, values * o.data.itemsize))

        handles = [m.register_forward_hook(hook) for m in self.modules() if not any(True for _ in m.children())]
        modes = {id(m): m.training for m in self.modules()}
        self.eval()
        try:
            with no_grad():
                p0 = next(iter(self.parameters()), None)
                xp = array_module(p0.data) if p0 is not None else np
                self(Tensor(xp.zeros(shape, dtype)))
        finally:
            for h in handles:
                h.remove()
            for m in self.modules():
                object.__setattr__(m, "training", modes[id(m)])
        params = list(self.parameters())
        s = Summary(rows=rows, input_shape=shape,
                    total_params=sum(int(p.data.size) for p in params),
                    trainable_params=sum(int(p.data.size) for p in params if p.requires_grad),
                    input_values=int(np.prod(shape)), itemsize=np.dtype(dtype).itemsize)
        if print_fn is not None:
            print_fn(str(s))
        return s


SummaryRow = namedtuple("SummaryRow", ["name", "type", "output_shape", "params", "trainable", "mult_adds",
                                       "activations", "activation_bytes"])


def _mem(nbytes):
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= div:
            return f"{nbytes / div:.2f} {unit}"
    return f"{nbytes} B"


class Summary:
    """What :meth:`Module.summary` measured; ``str()`` is the table."""

    def __init__(self, rows, input_shape, total_params, trainable_params, input_values, itemsize):
        self.rows = rows
        self.input_shape = input_shape
        self.total_params = total_params
        self.trainable_params = trainable_params
        self.non_trainable_params = total_params - trainable_params
        self.total_mult_adds = sum(r.mult_adds for r in rows)
        self.input_values = input_values
        self.total_activations = input_values + sum(r.activations for r in rows)
        self.total_activation_bytes = self.total_activations * itemsize

    def __str__(self):
        def shape(s):
            return "(" + ", ".join(["None"] + [str(d) for d in s[1:]]) + ")"

        table = [("Layer (type)", "Output Shape", "Param #", "Mult-Adds", "Activations")]
        for r in self.rows:
            table.append((f"{r.name} ({r.type})", shape(r.output_shape), f"{r.params:,}", f"{r.mult_adds:,}",
                          _mem(r.activation_bytes) if r.activations else "0 (in place)"))
        widths = [max(len(row[i]) for row in table) + 2 for i in range(5)]
        line = "".join(h.ljust(w) for h, w in zip(table[0], widths))
        out = [line, "=" * len(line)]
        for row in table[1:]:
            out.append("".join(c.ljust(w) for c, w in zip(row, widths)))
        out.append("=" * len(line))
        out += [f"Total params: {self.total_params:,}",
                f"Trainable params: {self.trainable_params:,}",
                f"Non-trainable params: {self.non_trainable_params:,}",
                f"Total mult-adds: {self.total_mult_adds:,} per batch of {self.input_shape[0]}",
                f"Forward activations (input + layer outputs): {self.total_activations:,} values "
                f"({_mem(self.total_activation_bytes)})"]
        return "\n".join(out)

    __repr__ = __str__


# ------------------------------------------------------------- containers
class Sequential(Module):
    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], (OrderedDict, dict)):
            for name, m in modules[0].items():
                self.add_module(name, m)
        else:
            for i, m in enumerate(modules):
                if not isinstance(m, Module):
                    raise TypeError(f"Sequential: argument {i} is a {type(m).__name__}, not a Module")
                self.add_module(str(i), m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def __getitem__(self, idx):
        mods = list(self._modules.items())
        if isinstance(idx, slice):
            return Sequential(OrderedDict(mods[idx]))
        return mods[idx][1]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module):
        self.add_module(str(len(self._modules)), module)
        return self


class ModuleList(Module):
    def __init__(self, modules=None):
        super().__init__()
        for m in modules or ():
            self.append(m)

    def append(self, module):
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList.append: expected a Module, got {type(module).__name__}")
        self.add_module(str(len(self._modules)), module)
        return self

    def extend(self, modules):
        for m in modules:
            self.append(m)
        return self

    def __getitem__(self, idx):
        mods = list(self._modules.values())
        if isinstance(idx, slice):
            return ModuleList(mods[idx])
        return mods[idx]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())
