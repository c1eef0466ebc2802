"""A progress bar: tqdm when it is installed, else a small built-in text bar (tqdm is optional)."""
from __future__ import annotations

import sys
import time

__all__ = ["progress_bar", "TextBar"]


class TextBar:
    """``[#####.....] 50% 469/938 loss=0.41 acc=0.86 img/s=2100 12s<12s``: redrawn in place on a
    terminal, and printed about every 10% when the output is a file or a pipe."""

    def __init__(self, total, desc="", file=None, width=24, disable=False):
        self.total, self.desc, self.width, self.disable = int(total), desc, width, disable
        self.file = file if file is not None else sys.stderr
        self.n = 0
        self.t0 = time.perf_counter()
        self.postfix = ""
        self.tty = hasattr(self.file, "isatty") and self.file.isatty()
        self._last_decile = -1

    def set_postfix(self, refresh=True, **kw):  # noqa: ARG002 - tqdm's signature; drawn by update()
        self.postfix = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in kw.items())

    def update(self, n=1):
        self.n += n
        if self.disable:
            return
        decile = int(10 * self.n / self.total) if self.total else 10
        if self.tty:
            self._draw("\r", "")
        elif decile != self._last_decile or self.n == self.total:
            self._draw("", "\n")
        self._last_decile = decile

    def _draw(self, pre, post):
        frac = self.n / self.total if self.total else 1.0
        fill = int(round(self.width * frac))
        el = time.perf_counter() - self.t0
        eta = el / self.n * (self.total - self.n) if self.n else 0.0
        line = (f"{self.desc} [{'#' * fill}{'.' * (self.width - fill)}] {100 * frac:3.0f}% {self.n}/{self.total} "
                f"{self.postfix} {el:.0f}s<{eta:.0f}s")
        self.file.write(pre + line + post)
        self.file.flush()

    def close(self):
        if not self.disable and self.tty:
            self.file.write("\n")
            self.file.flush()


def progress_bar(total, desc="", disable=False, file=None):
    """tqdm if importable (and not disabled), otherwise :class:`TextBar`."""
    if not disable:
        try:
            from tqdm import tqdm  # noqa: PLC0415 - optional dependency

            return tqdm(total=total, desc=desc, file=file, leave=True, dynamic_ncols=True)
        except ImportError:
            pass
    return TextBar(total, desc, file=file, disable=disable)
