"""Shared fixtures for the fastconv test suite.

* `rng`: a numpy Generator seeded from the test's node id (fixed, reproducible).
* `isa`: indirect fixture; the parameter names a GEMM micro-kernel ISA
  (fastconv.backends.cpu.set_isa) or None for "leave the default"; the
  finalizer always restores "auto".
* `threads`: restores fastconv's thread count after the test.
* `torch_or_skip()`: pytest.importorskip("torch"), so a missing torch shows up as
  visible skips rather than silently passing tests.
"""
import os
import sys
import zlib

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


from helpers import torch_or_skip  # noqa: E402,F401  (re-exported for the tests)


@pytest.fixture
def torch():
    """The torch module, or a visible skip where it is not installed."""
    return torch_or_skip()


@pytest.fixture
def rng(request):
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def isa(request):
    name = getattr(request, "param", None)
    if name is None:
        yield None
        return
    from fastconv.backends import cpu

    cpu.set_isa(name)
    try:
        yield name
    finally:
        cpu.set_isa("auto")


@pytest.fixture
def threads():
    import fastconv

    before = fastconv.get_num_threads()
    try:
        yield
    finally:
        fastconv.set_num_threads(before)
