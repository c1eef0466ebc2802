"""The ptxas -v report parser behind ``fastconv info --cuda`` (fastconv.cuda_report).

tests/data/ptxas_sample.txt is the report this build system produced for
csrc/cuda/conv_*.cu and runtime.cu with nvcc 13.0 (sm_75, sm_80, sm_90), those
sections captured unchanged (refreshed with the 1x1 / separable / tiled direct
kernels).
"""
import json
import os
import subprocess
import sys

import pytest

import fastconv
from fastconv import cuda_report

SAMPLE = os.path.join(os.path.dirname(__file__), "data", "ptxas_sample.txt")


def _sample():
    with open(SAMPLE, encoding="utf-8") as f:
        return f.read()


def test_parse_captured_sample():
    entries = cuda_report.parse(_sample())
    # one entry per "Compiling entry function" line
    assert len(entries) == _sample().count("Compiling entry function")
    assert {e["arch"] for e in entries} == {"sm_75", "sm_80", "sm_90"}
    by = {(e["kernel"], e["arch"]): e for e in entries}
    ig = by[("igemm_fprop_kernel<float, true, 0>", "sm_80")]
    assert ig["source"] == "conv_igemm.cu"
    assert ig["smem_bytes"] == 2 * 8 * 68 * 4 + 2 * 8 * 64 * 4  # As + Bs, double-buffered
    assert 64 < ig["registers"] <= 255
    assert ig["mangled"].startswith("_ZN8fastconv4cuda")
    for name in ("igemm_dgrad_kernel<float, 0>", "igemm_wgrad_kernel<float, 0>", "wgrad_reduce_kernel<float>",
                 "direct_fprop_kernel<double, false>", "direct_dgrad_kernel<float>", "direct_wgrad_kernel<float>"):
        assert all((name, a) in by for a in ("sm_75", "sm_80", "sm_90")), name
    # the kernel families of issue #4: 1x1 GEMM (float 64x64 and double 32x32 tiles on the same core),
    # separable 1xn / nx1 (dynamic shared memory only), the register-tiled direct Fprop
    for name in ("conv1x1_fprop_kernel<float, true>", "conv1x1_fprop_kernel<double, false>",
                 "conv1x1_dgrad_kernel<double>", "conv1x1_wgrad_kernel<float>", "wgrad_reduce_kernel<double>",
                 "sep_fprop_kernel<float, true>", "sep_fprop_kernel<double, false>", "sep_dgrad_kernel<double>",
                 "sep_wgrad_kernel<float>", "direct_fprop_tiled_kernel<float, false>",
                 "direct_fprop_tiled_kernel<double, true>", "direct_dgrad_tiled_kernel<float>",
                 "direct_dgrad_tiled_kernel<double>", "conv1x1_dgrad_zero_kernel<float>"):
        assert all((name, a) in by for a in ("sm_75", "sm_80", "sm_90")), name
    assert by[("conv1x1_fprop_kernel<double, true>", "sm_90")]["smem_bytes"] == 2 * 8 * 36 * 8 + 2 * 8 * 32 * 8
    assert by[("sep_wgrad_kernel<double>", "sm_80")]["source"] == "conv_separable.cu"
    assert by[("direct_dgrad_kernel<float>", "sm_90")]["source"] == "conv_direct.cu"
    assert cuda_report.spills(entries) == []  # the hot kernels do not spill
    table = cuda_report.format_table(entries)
    assert "igemm_wgrad_kernel<float, 0>" in table and "0 with register spills" in table


def test_parse_spills_and_device_functions():
    text = """## source: k.cu
ptxas info    : Compiling entry function '_ZN3foo6kernelIfLb1EEEvv' for 'sm_80'
ptxas info    : Function properties for _ZN3foo6helperEv
    16 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Function properties for _ZN3foo6kernelIfLb1EEEvv
    40 bytes stack frame, 36 bytes spill stores, 44 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 4096 bytes smem, 360 bytes cmem[0]
ptxas info    : Compiling entry function 'plain_c_kernel' for 'sm_90'
ptxas info    : Function properties for plain_c_kernel
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 12 registers, used 0 barriers, 360 bytes cmem[0]
"""
    a, b = cuda_report.parse(text)
    # the helper's frame line belongs to the helper, not to the kernel
    assert (a["stack_bytes"], a["spill_stores"], a["spill_loads"]) == (40, 36, 44)
    assert (a["registers"], a["smem_bytes"], a["source"]) == (255, 4096, "k.cu")
    assert (b["kernel"], b["registers"], b["smem_bytes"]) == ("plain_c_kernel", 12, 0)
    assert cuda_report.spills([a, b]) == [a]
    assert "1 with register spills" in cuda_report.format_table([a, b])


def test_simple_demangler_without_cxxfilt():
    m = "_ZN8fastconv4cuda46_GLOBAL__N__fc47dd74_13_conv_igemm_cu_522376a318igemm_fprop_kernelIfLb1ELi0EEEvNS1_8FpropOpsIT_XT0_EEE"
    assert cuda_report._simple_demangle(m) == "igemm_fprop_kernel<float, true, 0>"
    assert cuda_report._simple_demangle("_ZN3foo1kIdEEvv") == "k<double>"
    assert cuda_report._simple_demangle("not_mangled") == "not_mangled"
    assert cuda_report._shorten("void fastconv::cuda::(anonymous namespace)::k<float, (bool)1>(fastconv::X<f(int)>)") \
        == "k<float, (bool)1>"


def test_load_missing_report(tmp_path):
    assert cuda_report.load(str(tmp_path / "none.txt")) is None
    p = tmp_path / "r.txt"
    p.write_text(_sample())
    assert len(cuda_report.load(str(p))) == _sample().count("Compiling entry function")


def test_info_cuda():
    d = fastconv.info(cuda=True)
    assert d["cuda_backend"] == "available" or d["cuda_backend"].startswith("unavailable: ")
    if os.path.isfile(cuda_report.report_path()):
        assert isinstance(d["cuda_kernels"], list) and d["cuda_kernels"]
    else:
        assert "no ptxas report" in d["cuda_kernels"]
    assert "cuda_kernels" not in fastconv.info()


def test_cli_info_cuda(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    res = subprocess.run([sys.executable, "-m", "fastconv", "info", "--cuda"], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "cuda_backend" in res.stdout and "CUDA kernels" in res.stdout
    res = subprocess.run([sys.executable, "-m", "fastconv", "info", "--cuda", "--json"], capture_output=True,
                         text=True, cwd=tmp_path, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "cuda_kernels" in json.loads(res.stdout)
