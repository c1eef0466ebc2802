"""The ``-Xptxas -v`` report of the CUDA module: registers, shared memory and spills per kernel.

The build keeps ptxas' output for every ``csrc/cuda/*.cu`` (CMakeLists.txt:
``cmake/ptxas_tee.sh`` + ``cmake/ptxas_collect.cmake``) and installs it as
``fastconv/cuda_ptxas.txt`` next to the ``_cuda`` module. This module parses
it; ``python -m fastconv info --cuda`` prints the table. There is no need for
``cuobjdump`` or a GPU.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

REPORT_NAME = "cuda_ptxas.txt"

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '([^']+)'")
_PROPS = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")
_SOURCE = re.compile(r"^## source: (.+)$")


def report_path():
    """Where the installed report lives (it may not exist: CPU-only builds have none)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), REPORT_NAME)


def parse(text: str) -> list:
    """Entries of a ptxas -v report, one per (kernel, arch), in report order.

    Each entry: ``{"kernel", "mangled", "arch", "source", "registers", "smem_bytes",
    "stack_bytes", "spill_stores", "spill_loads"}`` (the sizes are ints; a field
    ptxas did not print is 0).
    """
    entries, source, cur, props_of = [], None, None, None
    for line in text.splitlines():
        m = _SOURCE.match(line)
        if m:
            source = m.group(1).strip()
            continue
        m = _ENTRY.search(line)
        if m:
            cur = {"mangled": m.group(1), "arch": m.group(2), "source": source, "registers": 0,
                   "smem_bytes": 0, "stack_bytes": 0, "spill_stores": 0, "spill_loads": 0}
            entries.append(cur)
            props_of = None
            continue
        m = _PROPS.search(line)
        if m:
            # properties of the entry being compiled, or of a non-inlined device function
            props_of = m.group(1)
            continue
        m = _FRAME.search(line)
        if m and cur is not None and props_of == cur["mangled"]:
            cur["stack_bytes"], cur["spill_stores"], cur["spill_loads"] = (int(v) for v in m.groups())
            continue
        m = _USED.search(line)
        if m and cur is not None:
            cur["registers"] = int(m.group(1))
            s = _SMEM.search(line)
            cur["smem_bytes"] = int(s.group(1)) if s else 0
    names = demangle([e["mangled"] for e in entries])
    for e, n in zip(entries, names):
        e["kernel"] = n
    return entries


def load(path=None):
    """Parsed entries of the installed report, or None when the build has none."""
    path = path or report_path()
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        return parse(f.read())


def spills(entries) -> list:
    """The entries with spill stores or loads (zero in a healthy build)."""
    return [e for e in entries if e["spill_stores"] or e["spill_loads"]]


# ------------------------------------------------------------------ names
def demangle(names) -> list:
    """Short readable kernel names: c++filt when it is installed, else a small Itanium-ABI reader."""
    names = list(names)
    out = None
    tool = shutil.which("c++filt")
    if tool and names:
        try:
            res = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True, timeout=10)
            lines = res.stdout.splitlines()
            if res.returncode == 0 and len(lines) == len(names):
                out = [_shorten(s) for s in lines]
        except (OSError, subprocess.SubprocessError):
            out = None
    if out is None:
        out = [_simple_demangle(n) for n in names]
    return out


def _shorten(demangled: str) -> str:
    """'void fastconv::cuda::(anonymous namespace)::k<float, true>(args)' -> 'k<float, true>'."""
    s = demangled.strip()
    if s.startswith("void "):
        s = s[5:]
    if s.endswith(")"):  # drop the parameter list: the '(' matching the final ')'
        depth = 0
        for i in range(len(s) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(s[i], 0)
            if depth == 0:
                s = s[:i]
                break
    for prefix in ("fastconv::cuda::", "(anonymous namespace)::"):
        s = s.replace(prefix, "")
    return s


_SIMPLE_ARGS = {"f": "float", "d": "double", "Lb0E": "false", "Lb1E": "true"}


def _simple_demangle(m: str) -> str:
    """Enough of the Itanium ABI for our kernels: the last nested name plus simple template args."""
    if not m.startswith("_ZN"):
        return m
    i, parts = 3, []
    while i < len(m) and m[i].isdigit():
        j = i
        while m[j].isdigit():
            j += 1
        n = int(m[i:j])
        parts.append(m[j:j + n])
        i = j + n
    if not parts:
        return m
    name = parts[-1]
    if i < len(m) and m[i] == "I":
        args, i = [], i + 1
        while i < len(m) and m[i] != "E":
            if m[i] in "fd":
                args.append(_SIMPLE_ARGS[m[i]])
                i += 1
                continue
            lit = re.match(r"L(b[01]|i\d+)E", m[i:])
            if not lit:
                args.append("...")
                break
            tok = lit.group(0)
            args.append(_SIMPLE_ARGS.get(tok, tok[2:-1]))
            i += len(tok)
        name += "<" + ", ".join(args) + ">"
    return name


def format_table(entries) -> str:
    """A plain-text table: kernel, arch, registers, smem, stack, spill stores/loads."""
    hdr = ("kernel", "arch", "regs", "smem B", "stack B", "spill st B", "spill ld B")
    rows = [(e["kernel"], e["arch"], str(e["registers"]), str(e["smem_bytes"]), str(e["stack_bytes"]),
             str(e["spill_stores"]), str(e["spill_loads"])) for e in entries]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(hdr)]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(hdr), line(["-" * w for w in widths])] + [line(r) for r in rows]
    bad = spills(entries)
    out.append(f"{len(entries)} kernel builds, {len(bad)} with register spills"
               + (": " + ", ".join(f"{e['kernel']} ({e['arch']})" for e in bad) if bad else ""))
    return "\n".join(out)
