"""The ``fastconv`` command line (``python -m fastconv ...``)."""
from __future__ import annotations

import argparse
import json
import sys


def _info(args) -> int:
    import fastconv

    d = fastconv.info()
    if args.json:
        print(json.dumps(d, indent=2, default=str))
        return 0
    width = max(len(k) for k in d)
    for k, v in d.items():
        if isinstance(v, (list, tuple)):
            v = ", ".join(map(str, v))
        print(f"{k:<{width}}  {v}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastconv", description="fastconv command line")
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="version, ISA, threads, backends, algorithms, CUDA build")
    p_info.add_argument("--json", action="store_true", help="print as JSON")
    p_info.set_defaults(func=_info)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
