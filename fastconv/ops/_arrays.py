"""Argument conversion shared by the array ops (one place for one rule)."""
from __future__ import annotations

import numpy as np


def float_array(value, name):
    """`value` as a floating-point ndarray, or TypeError naming `name`, its dtype and shape.

    Non-native byte order (big-endian data read from a file) is converted to native order: the
    ops pick their compute dtype by comparing with the native float64 (a '>f8' array would
    otherwise compute in float32). Extended precision (long double) is refused rather than rounded.
    """
    if isinstance(value, np.ndarray):
        arr = value
    else:
        if hasattr(value, "__cuda_array_interface__"):
            raise TypeError(f"{name}: GPU arrays need the CUDA backend, which is not built into this module")
        try:
            arr = np.asarray(value)
        except Exception as exc:  # noqa: BLE001 - any conversion failure is a type problem
            raise TypeError(f"{name} must be an array, got {type(value).__name__}: {exc}") from None
    if arr.dtype.kind != "f" or arr.dtype.itemsize > 8:
        raise TypeError(f"{name} must be a floating-point array (float16/32/64), got dtype {arr.dtype} "
                        f"with shape {arr.shape}")
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr
