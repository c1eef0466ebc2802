"""The ``fastconv`` command line (``python -m fastconv ...``): info, train, summary, bench."""
from __future__ import annotations

import argparse
import json
import os
import runpy
import sys


def _info(args) -> int:
    import fastconv

    d = fastconv.info(cuda=args.cuda)
    if args.json:
        print(json.dumps(d, indent=2, default=str))
        return 0
    kernels = d.pop("cuda_kernels", None)
    width = max(len(k) for k in d)
    for k, v in d.items():
        if isinstance(v, (list, tuple)):
            v = ", ".join(map(str, v))
        print(f"{k:<{width}}  {v}")
    if args.cuda:
        from .cuda_report import format_table

        print()
        if isinstance(kernels, list):
            print("CUDA kernels (ptxas -v report kept with the build):")
            print(format_table(kernels))
        else:
            print(f"CUDA kernels: {kernels}")
    return 0


def _shape(text):
    """'1x28x28' (or '1,28,28') -> (1, 28, 28)."""
    try:
        dims = tuple(int(v) for v in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CxHxW such as 1x28x28, got {text!r}") from None
    if len(dims) != 3 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive sizes CxHxW such as 3x224x224, got {text!r}")
    return dims


def _non_negative(text):
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _positive(text):
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _train(args) -> int:
    from .data import DatasetNotFoundError
    from .train import run_training

    opts = {k: getattr(args, k) for k in ("model", "dataset", "data_dir", "epochs", "batch_size", "optimizer", "lr",
                                          "momentum", "weight_decay", "seed", "out", "metrics_json", "resume",
                                          "limit_train", "limit_test", "augment", "lr_schedule", "step_size",
                                          "gamma", "threads", "input")}
    opts["progress"] = not args.no_progress
    if args.resume and not args.out:
        print("fastconv train: --resume needs --out DIR (the folder holding last.safetensors)", file=sys.stderr)
        return 2
    try:
        m = run_training(**opts)
    except DatasetNotFoundError as e:
        print(f"fastconv train: {e}", file=sys.stderr)
        return 2
    except _USER_ERRORS as e:
        return _user_error("train", e)
    ips = m["train_images_per_second"]
    acc = m["test_accuracy"]
    print(f"test accuracy {acc:.4f}, {ips:.0f} training images/s" if acc is not None else f"{ips:.0f} images/s")
    if args.metrics_json:
        print(f"metrics written to {args.metrics_json}")
    return 0


# what a wrong option, path, dataset file or checkpoint raises: one line instead of a traceback
# (FASTCONV_TRACEBACK=1 shows the traceback too)
_USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, IsADirectoryError, PermissionError,
                FloatingPointError)


def _user_error(command, e) -> int:
    if os.environ.get("FASTCONV_TRACEBACK", "0") not in ("", "0"):
        raise e
    print(f"fastconv {command}: error: {e}", file=sys.stderr)
    return 1 if isinstance(e, FloatingPointError) else 2


def _summary(args) -> int:
    from . import models

    shape = args.input
    kw = {"in_channels": shape[0]} if shape else {}
    if args.num_classes:
        kw["num_classes"] = args.num_classes
    try:
        m = models.get_model(args.model, **kw)
        m.summary(shape or m.default_input_shape, batch_size=args.batch_size)
    except (ValueError, TypeError) as e:
        return _user_error("summary", e)
    return 0


def _bench(args, rest) -> int:
    # the benchmarks live in the source tree, next to the package or in the current checkout
    roots = [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.getcwd()]
    scripts = [os.path.join(r, "benchmarks", f"bench_{args.what}.py") for r in roots]
    script = next((s for s in scripts if os.path.isfile(s)), None)
    if script is None:
        print(f"fastconv bench: bench_{args.what}.py not found in {' or '.join(os.path.dirname(s) for s in scripts)}"
              "; run it from a checkout of fastconv", file=sys.stderr)
        return 2
    if args.vs and args.vs != "torch":
        print(f"fastconv bench: --vs supports only 'torch', got {args.vs!r}", file=sys.stderr)
        return 2
    if args.vs is None and args.what == "train":
        rest = ["--no-torch"] + rest
    sys.argv = [script] + rest
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    return 0


def main(argv=None) -> int:
    from .data import DATASETS

    parser = argparse.ArgumentParser(prog="fastconv", description="fastconv command line")
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="version, ISA, threads, backends, algorithms, CUDA build")
    p_info.add_argument("--json", action="store_true", help="print as JSON")
    p_info.add_argument("--cuda", action="store_true",
                        help="also the CUDA backend's state and registers / shared memory / spills per kernel "
                             "(from the ptxas report kept with the build)")
    p_info.set_defaults(func=_info)

    p = sub.add_parser("train", help="train a model from the zoo on a dataset",
                       description="e.g. fastconv train simple_cnn --dataset fashion-mnist --epochs 1. A wrong "
                                   "option, path, dataset file or checkpoint ends with a one-line error "
                                   "(FASTCONV_TRACEBACK=1 shows the traceback).")
    p.add_argument("model", help="model name (see `fastconv summary --list`)")
    p.add_argument("--dataset", default="fashion-mnist", choices=DATASETS)
    p.add_argument("--data-dir", default=None, help="folder with the dataset files (default: the dataset's "
                   "system folder, /usr/share/datasets/fashion-mnist for Fashion-MNIST)")
    p.add_argument("--epochs", type=_positive, default=1)
    p.add_argument("--batch-size", type=_positive, default=64)
    p.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), default="sgd")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--lr-schedule", choices=("none", "step", "cosine", "onecycle"), default="none")
    p.add_argument("--step-size", type=_positive, default=1, help="StepLR period in epochs")
    p.add_argument("--gamma", type=float, default=0.1, help="StepLR factor")
    p.add_argument("--seed", type=_non_negative, default=0)
    p.add_argument("--out", default=None, help="folder for checkpoints, history.json and curves.png")
    p.add_argument("--metrics-json", default=None, help="write the run's metrics (accuracy, images/s, ...) here")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.safetensors")
    p.add_argument("--limit-train", type=_positive, default=None, help="use only the first N training images")
    p.add_argument("--limit-test", type=_positive, default=None, help="use only the first N test images")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crop + horizontal flip (default: on for CIFAR, off otherwise)")
    p.add_argument("--threads", type=_positive, default=None, help="kernel threads (default: OMP_NUM_THREADS/all)")
    p.add_argument("--input", type=_shape, default=None, help="CxHxW of the synthetic dataset's images")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

    p = sub.add_parser("summary", help="layer table: output shapes, parameters, mult-adds, activations")
    p.add_argument("model", nargs="?", help="model name")
    p.add_argument("--input", type=_shape, default=None, help="CxHxW, e.g. 3x224x224 (default: the model's)")
    p.add_argument("--num-classes", type=_positive, default=None)
    p.add_argument("--batch-size", type=_positive, default=1)
    p.add_argument("--list", action="store_true", help="list the models")
    p.set_defaults(func=None)

    p = sub.add_parser("bench", help="run a benchmark from benchmarks/ (conv, pool, train); other options "
                                     "are passed to the script")
    p.add_argument("what", choices=("conv", "pool", "train", "gemm", "layers"))
    p.add_argument("--vs", default=None, help="'torch': measure PyTorch in the same run (bench train)")

    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        return _bench(args, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "summary":
        from . import models

        if args.list or not args.model:
            print("\n".join(models.list_models()))
            return 0
        return _summary(args)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
