"""Readers for the on-disk formats of the classic image datasets.

* IDX (MNIST, Fashion-MNIST): a big-endian header ``0 0 <type> <ndim>``, ``ndim``
  big-endian uint32 sizes, then the values; the files may be gzip-compressed.
* CIFAR-10 / CIFAR-100 binary batches: fixed-size records of label byte(s)
  followed by 3072 pixel bytes (1024 red, 1024 green, 1024 blue, row-major 32x32).

Every reader validates magic numbers and sizes against the file's length and
raises ValueError naming the file, so a truncated download or a wrong file never
turns into silently misaligned images.
"""
from __future__ import annotations

import gzip
import os

import numpy as np

__all__ = ["read_idx", "read_cifar_batch", "write_idx", "write_cifar_batch"]

# IDX type byte -> big-endian dtype
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {np.dtype(v).str.lstrip("<>|="): k for k, v in _IDX_TYPES.items()}


def _read_bytes(path):
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(2)
        f.seek(0)
        raw = f.read()
    if head == b"\x1f\x8b":  # gzip magic: decide by content, not by the file name
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ValueError(f"{path}: corrupt gzip data ({exc})") from None
    return raw


def read_idx(path, expect_ndim=None):
    """Read an IDX file (raw or gzip) into a NumPy array of its stored dtype (native byte order)."""
    path = os.fspath(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise ValueError(f"{path}: not an IDX file ({len(raw)} bytes, the header alone is 4)")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file (magic bytes {raw[:4].hex()}; expected 0000 then a type "
                         f"code in {sorted(hex(k) for k in _IDX_TYPES)} and the number of dimensions)")
    ndim = raw[3]
    if expect_ndim is not None and ndim != expect_ndim:
        raise ValueError(f"{path}: IDX file has {ndim} dimensions, expected {expect_ndim}")
    hlen = 4 + 4 * ndim
    if len(raw) < hlen:
        raise ValueError(f"{path}: IDX header announces {ndim} dimensions but the file has {len(raw)} bytes")
    shape = tuple(int(v) for v in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dt = np.dtype(_IDX_TYPES[raw[2]])
    count = int(np.prod(shape, dtype=np.int64)) if ndim else 1
    need = hlen + count * dt.itemsize
    if len(raw) != need:
        raise ValueError(f"{path}: IDX header says shape {shape} of {dt.name} ({need} bytes with the header) "
                         f"but the (decompressed) file has {len(raw)} bytes")
    return np.frombuffer(raw, dt, count=count, offset=hlen).reshape(shape).astype(dt.newbyteorder("="))


def write_idx(path, array, compress=None):
    """Write ``array`` as an IDX file (gzip when ``compress`` or the name ends in .gz). Used by tests and tools."""
    path = os.fspath(path)
    a = np.asarray(array)
    code = _IDX_CODES.get(a.dtype.str.lstrip("<>|="))
    if code is None:
        raise TypeError(f"write_idx: dtype {a.dtype} has no IDX type code")
    header = bytes([0, 0, code, a.ndim]) + np.asarray(a.shape, ">u4").tobytes()
    body = header + np.ascontiguousarray(a, dtype=_IDX_TYPES[code]).tobytes()
    if compress or (compress is None and path.endswith(".gz")):
        body = gzip.compress(body, compresslevel=1)
    with open(path, "wb") as f:
        f.write(body)


_CIFAR_PIXELS = 3 * 32 * 32


def read_cifar_batch(path, label_bytes=1):
    """Read one CIFAR binary batch: ``(images uint8 (N, 3, 32, 32), labels uint8 (N, label_bytes))``.

    ``label_bytes`` is 1 for CIFAR-10 and 2 for CIFAR-100 (coarse label, then fine label).
    """
    path = os.fspath(path)
    if label_bytes not in (1, 2):
        raise ValueError(f"read_cifar_batch: label_bytes must be 1 (CIFAR-10) or 2 (CIFAR-100), got {label_bytes}")
    raw = _read_bytes(path)
    rec = label_bytes + _CIFAR_PIXELS
    if len(raw) == 0 or len(raw) % rec:
        raise ValueError(f"{path}: {len(raw)} bytes is not a whole number of {rec}-byte CIFAR records "
                         f"({label_bytes} label byte(s) + 3072 pixels); is this the right dataset/version?")
    a = np.frombuffer(raw, np.uint8).reshape(-1, rec)
    labels = a[:, :label_bytes].copy()
    images = a[:, label_bytes:].reshape(-1, 3, 32, 32).copy()
    return images, labels


def write_cifar_batch(path, images, labels):
    """Write a CIFAR binary batch (labels (N,) or (N, 2)); for tests and tools."""
    images = np.asarray(images, np.uint8).reshape(len(images), -1)
    labels = np.asarray(labels, np.uint8).reshape(len(images), -1)
    if images.shape[1] != _CIFAR_PIXELS:
        raise ValueError(f"write_cifar_batch: images must be (N, 3, 32, 32), got {images.shape}")
    with open(os.fspath(path), "wb") as f:
        f.write(np.concatenate([labels, images], axis=1).tobytes())
