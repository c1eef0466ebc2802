"""Checkpoints in the safetensors format, written and read by this file (never pickle).

Layout: 8-byte little-endian header length ``n``, ``n`` bytes of JSON (padded with
spaces to a multiple of 8), then the raw little-endian bytes of every tensor. The
header maps each name to ``{"dtype", "shape", "data_offsets": [begin, end]}``
(offsets relative to the data section) and may hold ``"__metadata__"`` (str -> str).

A flat ``{name: array}`` (a model's state_dict) is stored as exactly that, readable
by any safetensors reader. Anything else (an optimizer's state_dict: nested dicts,
int keys, numbers) is stored as tensors named by their path plus a JSON description
of the structure in ``__metadata__["fastconv.tree"]``.

Saving is atomic: the bytes go to a temporary file in the same folder, which is
fsync'ed and renamed over the target, so an interrupted save leaves the previous
checkpoint intact. Loading validates the header completely and raises ValueError
naming the file on anything corrupt or foreign.
"""
from __future__ import annotations

import json
import math
import os
import struct
import tempfile

import numpy as np

__all__ = ["save", "load"]

_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
           "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}
_CODES = {np.dtype(v).newbyteorder("=") if np.dtype(v).byteorder != "|" else np.dtype(v): k
          for k, v in _DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024
_TREE = "fastconv.tree"


def _to_numpy(v):
    """An array on the host (fastconv Tensor, torch tensor, CuPy array, NumPy array or scalar)."""
    from .autograd import Tensor  # noqa: PLC0415

    if isinstance(v, Tensor):
        v = v.data
    if hasattr(v, "detach") and hasattr(v, "numpy") and hasattr(v, "cpu"):  # torch
        v = v.detach().cpu().numpy()
    if hasattr(v, "get") and type(v).__module__.split(".")[0] == "cupy":  # pragma: no cover - CuPy
        v = v.get()
    return np.asarray(v)


def _is_array(v):
    from .autograd import Tensor  # noqa: PLC0415

    return isinstance(v, (np.ndarray, np.generic, Tensor)) or (
        hasattr(v, "shape") and hasattr(v, "dtype") and not isinstance(v, (int, float, str)))


def _encode(obj, path, tensors):
    """JSON-able description of ``obj``; arrays go to ``tensors`` under their dotted path."""
    if _is_array(obj):
        key = path or "tensor"
        while key in tensors or key == "__metadata__":  # the header's own key
            key += "_"
        tensors[key] = _to_numpy(obj)
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"__dict__": {k: _encode(v, f"{path}.{k}" if path else k, tensors) for k, v in obj.items()}}
        items = []
        for k, v in obj.items():
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise TypeError(f"save: dict keys must be str, int, float or bool, got {type(k).__name__}")
            items.append([k, _encode(v, f"{path}.{k}" if path else str(k), tensors)])
        return {"__items__": items}
    if isinstance(obj, (list, tuple)):
        enc = [_encode(v, f"{path}.{i}" if path else str(i), tensors) for i, v in enumerate(obj)]
        return {"__tuple__": enc} if isinstance(obj, tuple) else {"__list__": enc}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {"__value__": obj}
    raise TypeError(f"save: cannot store a value of type {type(obj).__name__} at {path or 'the top level'!r}")


def _decode(desc, tensors):
    if "__tensor__" in desc:
        return tensors[desc["__tensor__"]]
    if "__dict__" in desc:
        return {k: _decode(v, tensors) for k, v in desc["__dict__"].items()}
    if "__items__" in desc:
        return {k: _decode(v, tensors) for k, v in desc["__items__"]}
    if "__list__" in desc:
        return [_decode(v, tensors) for v in desc["__list__"]]
    if "__tuple__" in desc:
        return tuple(_decode(v, tensors) for v in desc["__tuple__"])
    if "__value__" in desc:
        return desc["__value__"]
    raise ValueError(f"unknown entry in the structure description: {sorted(desc)}")


def _is_flat(obj):
    # "__metadata__" is the header's own key: such a dict goes through the structure description
    return (isinstance(obj, dict) and obj and "__metadata__" not in obj
            and all(isinstance(k, str) and _is_array(v) for k, v in obj.items()))


def save(obj, path, metadata=None):
    """Write ``obj`` (a state_dict, or any nest of dicts/lists/arrays/numbers) to ``path`` atomically."""
    path = os.fspath(path)
    meta = {"format": "np", "producer": "fastconv"}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("save: metadata must map str to str")
        meta.update(metadata)
    if _is_flat(obj):
        tensors = {k: _to_numpy(v) for k, v in obj.items()}
    else:
        tensors = {}
        meta[_TREE] = json.dumps(_encode(obj, "", tensors))
    header = {"__metadata__": meta}
    offset = 0
    arrays = []
    for name, a in tensors.items():
        dt = a.dtype.newbyteorder("=") if a.dtype.byteorder not in ("|", "=") else a.dtype
        if dt not in _CODES:
            raise TypeError(f"save: {name!r} has dtype {a.dtype}, which safetensors cannot store")
        le = np.ascontiguousarray(a, dtype=np.dtype(_DTYPES[_CODES[dt]]))
        header[name] = {"dtype": _CODES[dt], "shape": list(a.shape), "data_offsets": [offset, offset + le.nbytes]}
        offset += le.nbytes
        arrays.append(le)
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * (-len(hbytes) % 8)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(hbytes)))
            f.write(hbytes)
            for a in arrays:
                if a.nbytes:
                    f.write(memoryview(a.reshape(-1).view(np.uint8)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _bad(path, why):
    return ValueError(f"{path}: not a valid safetensors checkpoint ({why})")


def load(path):
    """Read a safetensors file: a dict of arrays, or the nested object :func:`save` was given."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise _bad(path, f"the file has {len(raw)} bytes, fewer than the 8-byte header length")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > _MAX_HEADER or 8 + n > len(raw):
        raise _bad(path, f"header length {n} does not fit a file of {len(raw)} bytes")
    try:
        header = json.loads(raw[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _bad(path, f"the header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise _bad(path, "the header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise _bad(path, "__metadata__ is not an object")
    data = memoryview(raw)[8 + n:]
    spans = []
    tensors = {}
    for name, ent in header.items():
        if not isinstance(ent, dict) or not {"dtype", "shape", "data_offsets"} <= set(ent):
            raise _bad(path, f"entry {name!r} lacks dtype/shape/data_offsets")
        code, shape, offs = ent["dtype"], ent["shape"], ent["data_offsets"]
        if code == "BF16":
            dt = np.dtype("<u2")
        elif code in _DTYPES:
            dt = np.dtype(_DTYPES[code])
        else:
            raise _bad(path, f"entry {name!r} has unsupported dtype {code!r}")
        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        if (not isinstance(shape, list) or not all(is_int(s) and 0 <= s < 2**63 for s in shape)
                or not isinstance(offs, list) or len(offs) != 2 or not all(is_int(o) for o in offs)):
            raise _bad(path, f"entry {name!r} has a malformed shape {shape!r} or data_offsets {offs!r}")
        b, e = offs
        count = math.prod(shape)  # Python ints: no wrap-around
        if not 0 <= b <= e <= len(data) or e - b != count * dt.itemsize:
            raise _bad(path, f"entry {name!r}: data_offsets {offs} do not hold {count} values of {code} "
                             f"in a data section of {len(data)} bytes")
        spans.append((b, e, name))
        try:
            a = np.frombuffer(data, dtype=dt, count=count, offset=b).reshape(shape)
        except ValueError as exc:  # e.g. a dimension of 2^62 in an empty tensor
            raise _bad(path, f"entry {name!r} has shape {shape!r}, which NumPy cannot hold: {exc}") from None
        if code == "BF16":  # bfloat16 is the top half of a float32
            a = (a.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = a.astype(dt.newbyteorder("=") if code != "BF16" else np.float32, copy=True)
    spans.sort()
    end = 0
    for b, e, name in spans:
        if b < end:
            raise _bad(path, f"entry {name!r} overlaps the previous tensor's data")
        end = e
    if _TREE in meta:
        try:
            return _decode(json.loads(meta[_TREE]), tensors)
        except (KeyError, TypeError, ValueError, json.JSONDecodeError, RecursionError) as exc:
            raise _bad(path, f"the fastconv structure description is damaged: {exc}") from None
    return tensors
