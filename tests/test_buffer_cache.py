"""The output-buffer cache of the compiled CPU module (csrc/bindings/cpu_buffers.cpp).

Results of 1 MiB and more come from a cache of blocks that earlier results gave back, so
the op writing them takes no page faults; these tests pin what a caller can rely on: an
ordinary writable array of the asked shape and dtype, never shared with a live array,
reused after it dies, bounded by the limit, and op results that do not depend on it.
"""
from __future__ import annotations

import gc

import numpy as np
import pytest

import fastconv
from fastconv.backends import cpu as cpu_backend

pytestmark = pytest.mark.skipif(not cpu_backend.CPU_AVAILABLE, reason="compiled CPU module not built")

MIB = 1 << 20


@pytest.fixture
def cache_limit():
    before = fastconv.buffer_cache_info()["limit_bytes"]
    yield
    fastconv.set_buffer_cache_limit(before)


def test_small_requests_are_plain_numpy_arrays():
    a = cpu_backend.empty((7, 9), np.float32)
    assert a.shape == (7, 9) and a.dtype == np.float32 and a.base is None and a.flags.owndata


@pytest.mark.parametrize("dtype", [np.float32, "float64", np.dtype(np.int64), np.uint8, np.float16])
@pytest.mark.parametrize("shape", [(MIB,), (3, 517, 1031), [2, np.int64(700), 800]])
def test_large_requests_are_ordinary_arrays(dtype, shape):
    a = cpu_backend.empty(shape, dtype)
    assert a.shape == tuple(int(s) for s in shape)
    assert a.dtype == np.dtype(dtype)
    assert a.flags.c_contiguous and a.flags.writeable and a.flags.aligned
    assert a.ctypes.data % 64 == 0
    a[...] = 3  # every byte is writable
    assert np.all(a == 3)
    b = a.reshape(-1)[::2]  # views keep the block alive
    del a
    gc.collect()
    assert np.all(b == 3)


def test_blocks_are_reused_only_after_the_array_dies(cache_limit):
    fastconv.set_buffer_cache_limit(0)  # start empty
    fastconv.set_buffer_cache_limit(256 * MIB)
    a = cpu_backend.empty((3 * MIB,), np.float32)
    a[...] = 1.0
    b = cpu_backend.empty((3 * MIB,), np.float32)  # a is alive: a different block
    assert not np.shares_memory(a, b)
    addr = a.ctypes.data
    hits = fastconv.buffer_cache_info()["hits"]
    del a
    info = fastconv.buffer_cache_info()
    assert info["idle_bytes"] >= 12 * MIB and info["idle_blocks"] >= 1
    c = cpu_backend.empty((3 * MIB,), np.float32)  # same size: the block a gave back
    assert fastconv.buffer_cache_info()["hits"] == hits + 1
    assert c.ctypes.data == addr
    assert not np.shares_memory(b, c)


def test_a_much_larger_block_is_cut_for_a_small_request(cache_limit):
    fastconv.set_buffer_cache_limit(0)  # start empty
    fastconv.set_buffer_cache_limit(256 * MIB)
    big = cpu_backend.empty((16 * MIB,), np.uint8)
    addr = big.ctypes.data
    del big
    info = fastconv.buffer_cache_info()
    assert info["idle_bytes"] == 16 * MIB
    small = cpu_backend.empty((4 * MIB,), np.uint8)  # 4x smaller: the block's head, its tail unmapped
    after = fastconv.buffer_cache_info()
    assert after["hits"] == info["hits"] + 1 and after["cuts"] == info["cuts"] + 1
    assert after["misses"] == info["misses"] and after["idle_bytes"] == 0
    assert small.ctypes.data == addr and small.size == 4 * MIB
    small[...] = 5  # the head is still mapped and writable
    assert np.all(small == 5)
    del small
    assert fastconv.buffer_cache_info()["idle_bytes"] == 4 * MIB  # what comes back is the cut block


def test_a_miss_keeps_idle_blocks_up_to_the_slack(cache_limit):
    """A miss (no idle block large enough) keeps idle blocks up to the miss slack, min(64 MiB,
    limit / 2), and releases the oldest beyond it: the footprint exceeds what fresh allocations
    map by at most the slack, and a training loop's blocks of one size survive a request of
    another (releasing them made the steps of a loop miss in a cycle)."""
    fastconv.set_buffer_cache_limit(0)  # start empty
    fastconv.set_buffer_cache_limit(256 * MIB)
    assert fastconv.buffer_cache_info()["miss_slack_bytes"] == 64 * MIB
    blocks = [cpu_backend.empty((n * MIB,), np.uint8) for n in (2, 3)]
    del blocks  # 5 MiB idle
    info = fastconv.buffer_cache_info()
    big = cpu_backend.empty((4 * MIB,), np.uint8)  # no block large enough: a miss that keeps both
    after = fastconv.buffer_cache_info()
    assert after["misses"] == info["misses"] + 1 and after["idle_bytes"] == 5 * MIB
    del big
    fastconv.set_buffer_cache_limit(0)
    fastconv.set_buffer_cache_limit(6 * MIB)  # slack 3 MiB
    assert fastconv.buffer_cache_info()["miss_slack_bytes"] == 3 * MIB
    two, three = (cpu_backend.empty((n * MIB,), np.uint8) for n in (2, 3))
    del two  # given back first: the oldest
    del three
    assert fastconv.buffer_cache_info()["idle_bytes"] == 5 * MIB
    big = cpu_backend.empty((4 * MIB,), np.uint8)  # releases the oldest (2 MiB) down to the slack
    assert fastconv.buffer_cache_info()["idle_bytes"] == 3 * MIB
    info = fastconv.buffer_cache_info()
    mid = cpu_backend.empty((3 * MIB,), np.uint8)  # the 3 MiB block is still there: a hit
    after = fastconv.buffer_cache_info()
    assert after["hits"] == info["hits"] + 1 and after["idle_bytes"] == 0
    del big, mid


def test_limit_bounds_the_idle_bytes(cache_limit):
    fastconv.set_buffer_cache_limit(10 * MIB)
    arrays = [cpu_backend.empty((4 * MIB,), np.uint8) for _ in range(5)]
    del arrays
    info = fastconv.buffer_cache_info()
    assert 0 < info["idle_bytes"] <= 10 * MIB
    fastconv.set_buffer_cache_limit(0)
    info = fastconv.buffer_cache_info()
    assert info["idle_bytes"] == 0 and info["idle_blocks"] == 0 and info["limit_bytes"] == 0
    a = cpu_backend.empty((4 * MIB,), np.uint8)  # still works without a cache
    a[...] = 7
    del a
    assert fastconv.buffer_cache_info()["idle_bytes"] == 0


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"negative dimension in shape \(-1, 3\)"):
        cpu_backend.empty((-1, 3), np.float32)
    with pytest.raises(ValueError, match="too big"):
        cpu_backend.empty((1 << 40, 1 << 40), np.float32)
    with pytest.raises(ValueError, match="must be >= 0"):
        fastconv.set_buffer_cache_limit(-1)
    with pytest.raises(TypeError, match="must be an int"):
        fastconv.set_buffer_cache_limit(1.5)


def test_op_results_do_not_depend_on_reused_blocks(cache_limit):
    """A reused block holds an earlier result's values: every op must overwrite all of it."""
    from fastconv.ops import pool as P

    fastconv.set_buffer_cache_limit(256 * MIB)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 16, 66, 66), dtype=np.float32)  # grad_input 1.1 MB: cached
    y = P.avg_pool2d(x, 3, 2, 1)
    g = rng.standard_normal(y.shape, dtype=np.float32)
    first = P.avg_pool2d_backward(g, x, 3, 2, 1)
    ref = first.copy()
    for fill in (np.nan, 1e30):
        first[...] = fill  # poison the block, then let it go back
        del first
        first = P.avg_pool2d_backward(g, x, 3, 2, 1)
        np.testing.assert_array_equal(first, ref)
    _, idx = P.max_pool2d(x, 3, 2, 1, return_indices=True)
    gm = P.max_pool2d_backward(g, x, 3, 2, 1, indices=idx)
    ref_m = gm.copy()
    gm[...] = np.nan
    del gm
    np.testing.assert_array_equal(P.max_pool2d_backward(g, x, 3, 2, 1, indices=idx), ref_m)
