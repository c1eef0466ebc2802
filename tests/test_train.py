"""fastconv.train and the command line: metrics, progress bar, Trainer (checkpoint/resume), CLI."""
import io
import json
import os

import numpy as np
import pytest

import fastconv
from fastconv import data, models, nn, optim
from fastconv.cli import main
from fastconv.nn import functional as F
from fastconv.train import (MetricAccumulator, TextBar, Trainer, classification_loss, confusion_matrix,
                            per_class_report, progress_bar, topk_correct)


# --------------------------------------------------------------- metrics
def test_confusion_matrix_against_loop(rng):
    t, p = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    ref = np.zeros((4, 4), int)
    for a, b in zip(t, p):
        ref[a, b] += 1
    np.testing.assert_array_equal(confusion_matrix(t, p, 4), ref)
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([0, 5], [0, 1], 4)
    with pytest.raises(ValueError, match="labels"):
        confusion_matrix([0, 1], [0], 4)


def test_topk_correct():
    logits = np.array([[0.1, 0.5, 0.3, 0.2, 0.0, -1.0],
                       [0.9, 0.1, 0.2, 0.3, 0.4, 0.5]])
    assert topk_correct(logits, np.array([1, 0]), 1) == 2
    assert topk_correct(logits, np.array([2, 5]), 1) == 0
    assert topk_correct(logits, np.array([2, 5]), 2) == 2
    assert topk_correct(logits, np.array([5, 1]), 5) == 0
    assert topk_correct(logits[:, :3], np.array([2, 2]), 5) == 2       # k > classes: everything counts


def test_per_class_report_values():
    cm = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    r = per_class_report(cm, ["a", "b", "c"])
    np.testing.assert_allclose(r["precision"], [5 / 7, 3 / 4, 0])
    np.testing.assert_allclose(r["recall"], [5 / 6, 3 / 5, 0])
    f1a = 2 * (5 / 7) * (5 / 6) / (5 / 7 + 5 / 6)
    np.testing.assert_allclose(r["f1"][0], f1a)
    assert r["support"] == [6, 5, 0] and r["classes"] == ["a", "b", "c"]


def test_metric_accumulator():
    acc = MetricAccumulator(3, topk=2)
    acc.update(np.array([[3.0, 1, 0], [0, 2, 1]]), np.array([0, 2]), loss=1.0)
    acc.update(np.array([[0.0, 0, 1]]), np.array([2]), loss=4.0)
    r = acc.compute()
    assert r["accuracy"] == pytest.approx(2 / 3) and r["top2_accuracy"] == pytest.approx(1.0)
    assert r["loss"] == pytest.approx((1.0 * 2 + 4.0) / 3) and r["n"] == 3
    assert r["confusion_matrix"] == [[1, 0, 0], [0, 0, 0], [0, 1, 1]]


# ---------------------------------------------------------- progress bar
def test_text_bar_to_a_file():
    buf = io.StringIO()
    bar = TextBar(20, "epoch 1", file=buf)
    for i in range(20):
        bar.update()
        bar.set_postfix(loss=0.5, acc=0.75)
    bar.close()
    out = buf.getvalue().splitlines()
    assert 5 <= len(out) <= 12                                   # about every 10%, not every batch
    assert out[-1].startswith("epoch 1 [########################] 100% 20/20 loss=0.5 acc=0.75")
    quiet = io.StringIO()
    b = TextBar(5, file=quiet, disable=True)
    b.update(5)
    assert quiet.getvalue() == ""


def test_progress_bar_without_tqdm():
    bar = progress_bar(3, "x", file=io.StringIO())
    try:
        import tqdm  # noqa: F401
    except ImportError:
        assert isinstance(bar, TextBar)
    bar.close()
    assert isinstance(progress_bar(3, disable=True), TextBar)


# --------------------------------------------------------------- trainer
def _loaders(n_train=192, n_test=64, shape=(1, 28, 28), seed=0):
    tr = data.synthetic(n_train, shape, 10, seed=seed)
    te = data.synthetic(n_test, shape, 10, seed=seed + 1)
    norm = data.Normalize(0.5, 0.25)
    return (data.DataLoader(tr, 32, shuffle=True, seed=3, transform=norm),
            data.DataLoader(te, 50, transform=norm))


def test_classification_loss_aux():
    rng = np.random.default_rng(0)
    a, b, c = (fastconv.Tensor(rng.random((4, 5), dtype=np.float32)) for _ in range(3))
    y = np.array([0, 1, 2, 4])
    want = float(F.cross_entropy(a, y).item()) + 0.3 * (float(F.cross_entropy(b, y).item())
                                                        + float(F.cross_entropy(c, y).item()))
    assert float(classification_loss((a, b, c), y).item()) == pytest.approx(want, rel=1e-5)
    assert float(classification_loss((a, None), y).item()) == pytest.approx(float(F.cross_entropy(a, y).item()))


def test_trainer_learns_and_writes(tmp_path):
    nn.manual_seed(0)
    m = models.simple_cnn()
    tl, vl = _loaders()
    opt = optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    logs = []
    t = Trainer(m, opt, tl, vl, out_dir=tmp_path, progress=False, log=logs.append,
                scheduler=optim.StepLR(opt, 1, 0.5))
    hist = t.fit(3)
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert [h["lr"] for h in hist] == pytest.approx([0.01, 0.005, 0.0025])
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert hist[-1]["test_accuracy"] > 0.9                         # synthetic classes are separable
    for k in ("train_images_per_second", "epoch_time", "test_top5_accuracy", "per_class", "confusion_matrix"):
        assert k in hist[-1]
    assert np.sum(hist[-1]["confusion_matrix"]) == 64
    files = set(os.listdir(tmp_path))
    assert {"last.safetensors", "epoch_001.safetensors", "epoch_003.safetensors", "history.json"} <= files
    h = json.loads((tmp_path / "history.json").read_text())
    assert len(h["epochs"]) == 3 and h["epochs"][2]["test_accuracy"] == hist[2]["test_accuracy"]
    try:
        import matplotlib  # noqa: F401
        assert "curves.png" in files
    except ImportError:
        assert any("matplotlib is not installed" in s for s in logs)
    ev = t.evaluate()
    assert ev["accuracy"] == pytest.approx(hist[-1]["test_accuracy"])


def _make(seed_dir, dropout_model=False):
    nn.manual_seed(7)
    if dropout_model:  # dropout masks come from the default generator: resume must restore it
        m = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10))
    else:
        m = models.simple_cnn()
    tl, vl = _loaders()
    opt = optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    return Trainer(m, opt, tl, vl, out_dir=seed_dir, progress=False, log=None,
                   scheduler=optim.StepLR(opt, 1, 0.5))


@pytest.mark.parametrize("dropout_model", [False, True])
def test_resume_is_bit_identical(tmp_path, dropout_model):
    full = _make(tmp_path / "full", dropout_model)
    full.fit(2)
    part = _make(tmp_path / "part", dropout_model)
    part.fit(1)
    resumed = _make(tmp_path / "part", dropout_model)
    hist = resumed.fit(2, resume=True)
    assert [h["epoch"] for h in hist] == [1, 2]
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert hist[1]["train_loss"] == full.history[1]["train_loss"]
    assert resumed.optimizer.param_groups[0]["lr"] == full.optimizer.param_groups[0]["lr"]
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        _make(tmp_path / "empty").fit(1, resume=True)


# ------------------------------------------------------------------- CLI
def _fake_fashion(root, n_train=96, n_test=40):
    rng = np.random.default_rng(0)
    tmpl = rng.integers(0, 256, (10, 28, 28))
    for split, n in (("train", n_train), ("t10k", n_test)):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = np.clip(tmpl[y] * 0.7 + rng.integers(0, 77, (n, 28, 28)), 0, 255).astype(np.uint8)
        data.write_idx(root / f"{split}-images-idx3-ubyte.gz", x)
        data.write_idx(root / f"{split}-labels-idx1-ubyte.gz", y)


def test_cli_train_fashion_files_and_resume(tmp_path, capsys):
    _fake_fashion(tmp_path)
    out, mj = tmp_path / "run", tmp_path / "m.json"
    args = ["train", "simple_cnn", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path), "--batch-size", "32",
            "--out", str(out), "--metrics-json", str(mj), "--no-progress", "--seed", "1"]
    assert main(args + ["--epochs", "1"]) == 0
    m = json.loads(mj.read_text())
    for k in ("test_accuracy", "train_images_per_second", "epoch_times", "train_losses", "test_losses",
              "per_class", "confusion_matrix"):
        assert k in m, k
    assert len(m["epoch_times"]) == 1 and 0 <= m["test_accuracy"] <= 1 and m["train_images_per_second"] > 0
    assert m["config"]["train_samples"] == 96 and m["config"]["parameters"] == 29_034
    assert main(args + ["--epochs", "2", "--resume"]) == 0
    m2 = json.loads(mj.read_text())
    assert m2["epochs"] == 2 and m2["train_losses"][0] == m["train_losses"][0]
    assert "resumed from" in capsys.readouterr().out


def test_cli_train_lenet_pads_and_limits(tmp_path):
    _fake_fashion(tmp_path)
    mj = tmp_path / "m.json"
    assert main(["train", "lenet5", "--data-dir", str(tmp_path), "--limit-train", "50", "--limit-test", "20",
                 "--metrics-json", str(mj), "--no-progress", "--optimizer", "adam", "--lr", "0.001"]) == 0
    m = json.loads(mj.read_text())
    assert m["config"]["train_samples"] == 50 and m["config"]["test_samples"] == 20
    assert "PadTo((32, 32))" in m["config"]["transforms_train"]


def test_cli_train_synthetic_resnet20(tmp_path):
    mj = tmp_path / "m.json"
    assert main(["train", "resnet20", "--dataset", "synthetic", "--input", "3x16x16", "--limit-train", "64",
                 "--limit-test", "32", "--batch-size", "32", "--metrics-json", str(mj), "--no-progress",
                 "--lr-schedule", "cosine", "--epochs", "2"]) == 0
    m = json.loads(mj.read_text())
    assert m["epochs"] == 2 and m["lrs"][1] < m["lrs"][0]


def test_cli_train_missing_data(tmp_path, capsys):
    assert main(["train", "simple_cnn", "--data-dir", str(tmp_path / "none"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "apt-get install -y dataset-fashion-mnist" in err and "--data-dir" in err


def test_cli_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        main(["train", "simple_cnn", "--epochs", "0"])
    with pytest.raises(SystemExit):
        main(["summary", "lenet5", "--input", "1x28"])
    assert main(["summary", "nosuchnet"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_cli_summary_and_info(capsys):
    assert main(["summary", "simple_cnn", "--input", "1x28x28"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 29,034" in out and "(None, 32, 7, 7)" in out
    assert main(["summary", "lenet5"]) == 0
    assert "Total params: 61,706" in capsys.readouterr().out
    assert main(["summary", "--list"]) == 0
    assert "resnet152" in capsys.readouterr().out
    assert main(["info", "--json"]) == 0
    assert "version" in json.loads(capsys.readouterr().out)


def test_cli_bench_train_runs(capsys):
    rc = main(["bench", "train", "--only", "lenet5-b64", "--repeat", "1", "--steps", "1", "--threads", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "lenet5" in out and "fastconv img/s" in out
    assert main(["bench", "train", "--vs", "tensorflow"]) == 2


def test_cli_user_mistakes_are_one_line_errors_before_training(tmp_path, capsys):
    syn = ["--dataset", "synthetic", "--limit-train", "64", "--limit-test", "32", "--no-progress"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [(["train", "nosuchnet"] + syn, "unknown model 'nosuchnet'"),
             (["train", "simple_cnn", "--metrics-json", str(tmp_path)] + syn, "is a folder"),
             (["train", "simple_cnn", "--metrics-json", str(afile / "m.json")] + syn, "cannot create"),
             (["train", "simple_cnn", "--out", str(afile)] + syn, "is a file, not a folder"),
             (["train", "simple_cnn", "--lr", "-1"] + syn, "invalid learning rate"),
             (["summary", "vgg16", "--input", "1x28x28"], "output size is too small")]
    for argv, msg in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "afile" / "m.json").exists()
    with pytest.raises(SystemExit):
        main(["train", "simple_cnn", "--seed", "-1"] + syn)
    assert main(["train", "ResNet-20", "--input", "3x16x16", "--epochs", "1"] + syn) == 0  # as get_model


def test_cli_resume_with_another_schedule_length_is_refused(tmp_path, capsys):
    base = ["train", "simple_cnn", "--dataset", "synthetic", "--limit-train", "128", "--limit-test", "32",
            "--lr-schedule", "onecycle", "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(base + ["--epochs", "1"]) == 0
    capsys.readouterr()
    # the saved OneCycleLR spans 1 epoch: a longer run would step past its end (a traceback before)
    assert main(base + ["--epochs", "3", "--resume"]) == 2
    assert "resume with the run's original --epochs" in capsys.readouterr().err
