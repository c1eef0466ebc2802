"""fastconv.data: IDX / CIFAR readers on small files written here in the real formats, loader, transforms."""
import gzip
import os
import struct

import numpy as np
import pytest

from fastconv import data


def _idx_bytes(a, type_code=0x08):
    """IDX bytes built by hand (not with fastconv's writer): magic 0 0 type ndim, big-endian sizes."""
    a = np.asarray(a)
    head = struct.pack(">BBBB", 0, 0, type_code, a.ndim) + b"".join(struct.pack(">I", s) for s in a.shape)
    dt = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}[type_code]
    return head + a.astype(dt).tobytes()


def _write(path, raw, gz):
    if gz:
        raw = gzip.compress(raw)
    path.write_bytes(raw)


def _mnist_dir(root, n_train=12, n_test=5, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labs = rng.integers(0, 10, n).astype(np.uint8)
        ext = ".gz" if gz else ""
        _write(root / f"{split}-images-idx3-ubyte{ext}", _idx_bytes(imgs), gz)
        _write(root / f"{split}-labels-idx1-ubyte{ext}", _idx_bytes(labs), gz)
        out[split] = (imgs, labs)
    return out


# ----------------------------------------------------------------- IDX
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_values(tmp_path, gz):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / ("a.idx" + (".gz" if gz else ""))
    _write(p, _idx_bytes(a), gz)
    got = data.read_idx(p)
    assert got.dtype == np.uint8 and got.shape == (2, 3, 4)
    np.testing.assert_array_equal(got, a)


def test_read_idx_other_dtypes_big_endian(tmp_path):
    a = np.array([[1, -2, 70000], [3, 4, -5]], np.int32)
    p = tmp_path / "i.idx"
    p.write_bytes(_idx_bytes(a, 0x0C))
    got = data.read_idx(p)
    assert got.dtype == np.int32 and got.dtype.byteorder in ("=", "<", "|")
    np.testing.assert_array_equal(got, a)
    f = np.array([0.5, -1.25, 3e7], np.float32)
    p.write_bytes(_idx_bytes(f, 0x0D))
    np.testing.assert_array_equal(data.read_idx(p), f)


def test_write_idx_round_trip(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (3, 5, 7), dtype=np.uint8)
    data.write_idx(tmp_path / "w.gz", a)
    assert (tmp_path / "w.gz").read_bytes()[:2] == b"\x1f\x8b"
    assert data.read_idx(tmp_path / "w.gz").tobytes() == a.tobytes()
    assert _idx_bytes(a) == gzip.decompress((tmp_path / "w.gz").read_bytes())


@pytest.mark.parametrize("raw,why", [
    (b"\x00\x00", "4"),                                            # shorter than the magic
    (b"\x12\x34\x08\x01" + struct.pack(">I", 3) + b"abc", "magic"),  # bad magic
    (b"\x00\x00\x07\x01" + struct.pack(">I", 3) + b"abc", "magic"),  # unknown type code
    (b"\x00\x00\x08\x02" + struct.pack(">I", 3), "announces"),        # header cut short
    (b"\x00\x00\x08\x01" + struct.pack(">I", 5) + b"abc", "bytes"),   # truncated body
    (b"\x00\x00\x08\x01" + struct.pack(">I", 2) + b"abc", "bytes"),   # trailing bytes
])
def test_read_idx_rejects_corrupt(tmp_path, raw, why):
    p = tmp_path / "bad-idx"
    p.write_bytes(raw)
    with pytest.raises(ValueError, match=why) as e:
        data.read_idx(p)
    assert "bad-idx" in str(e.value)


def test_read_idx_corrupt_gzip(tmp_path):
    p = tmp_path / "x.gz"
    p.write_bytes(gzip.compress(_idx_bytes(np.zeros((4, 4), np.uint8)))[:-6])
    with pytest.raises(ValueError, match="x.gz"):
        data.read_idx(p)


def test_read_idx_expect_ndim(tmp_path):
    p = tmp_path / "l"
    p.write_bytes(_idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(ValueError, match="1 dimensions, expected 3"):
        data.read_idx(p, expect_ndim=3)


# ------------------------------------------------------- (Fashion-)MNIST
@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("loader", [data.fashion_mnist, data.mnist])
def test_mnist_like_loaders(tmp_path, gz, loader):
    ref = _mnist_dir(tmp_path, gz=gz)
    tr, te = loader(tmp_path), loader(str(tmp_path), train=False)
    assert len(tr) == 12 and len(te) == 5 and tr.image_shape == (1, 28, 28) and tr.num_classes == 10
    np.testing.assert_array_equal(tr.images[:, 0], ref["train"][0])
    np.testing.assert_array_equal(te.labels, ref["t10k"][1].astype(np.int64))
    img, lab = tr[3]
    assert img.dtype == np.float32 and lab == int(ref["train"][1][3])
    np.testing.assert_allclose(img[0], ref["train"][0][3] / 255.0, rtol=1e-6)


def test_mnist_original_file_names(tmp_path):
    """MNIST's own site spells them train-images.idx3-ubyte."""
    _mnist_dir(tmp_path, gz=False)
    for f in list(tmp_path.iterdir()):
        f.rename(tmp_path / f.name.replace("-idx", ".idx"))
    assert len(data.mnist(tmp_path)) == 12


def test_missing_dataset_error_says_how(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as e:
        data.fashion_mnist(tmp_path / "nowhere")
    msg = str(e.value)
    assert "apt-get install -y dataset-fashion-mnist" in msg and "--data-dir" in msg and "nowhere" in msg
    assert isinstance(e.value, FileNotFoundError)
    with pytest.raises(data.DatasetNotFoundError, match="--data-dir"):
        data.mnist(tmp_path)


def test_mnist_count_and_label_validation(tmp_path):
    _mnist_dir(tmp_path, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(11, np.uint8)))
    with pytest.raises(ValueError, match="12 images but .* 11 labels"):
        data.fashion_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.full(12, 10, np.uint8)))
    with pytest.raises(ValueError, match="0..9"):
        data.fashion_mnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_bytes(np.zeros((12, 27, 28), np.uint8)))
    with pytest.raises(ValueError, match="28x28"):
        data.fashion_mnist(tmp_path)


@pytest.mark.skipif(not os.path.isfile("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz"),
                    reason="dataset-fashion-mnist is not installed")
def test_installed_fashion_mnist_test_split():
    te = data.fashion_mnist(train=False)
    assert len(te) == 10000 and te.images.dtype == np.uint8 and te.image_shape == (1, 28, 28)
    np.testing.assert_array_equal(np.bincount(te.labels), [1000] * 10)


# ----------------------------------------------------------------- CIFAR
def _cifar_records(rng, n, label_bytes):
    labels = rng.integers(0, 10 if label_bytes == 1 else 20, (n, label_bytes)).astype(np.uint8)
    pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    return labels, pixels, np.concatenate([labels, pixels], 1).tobytes()


def test_cifar10_batches(tmp_path):
    rng = np.random.default_rng(1)
    d = tmp_path / "cifar-10-batches-bin"
    d.mkdir()
    ref = []
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels, pixels, raw = _cifar_records(rng, 3, 1)
        (d / name).write_bytes(raw)
        ref.append((labels, pixels))
    tr = data.cifar10(tmp_path)                    # the parent folder works
    te = data.cifar10(d, train=False)              # and the folder itself
    assert len(tr) == 15 and len(te) == 3 and tr.image_shape == (3, 32, 32)
    np.testing.assert_array_equal(tr.labels, np.concatenate([r[0][:, 0] for r in ref[:5]]))
    # channel planes: the first 1024 bytes are red, row-major
    lab, pix = ref[1]
    np.testing.assert_array_equal(tr.images[3, 0], pix[0, :1024].reshape(32, 32))
    np.testing.assert_array_equal(tr.images[3, 2, 31], pix[0, 2048 + 31 * 32:3072])
    np.testing.assert_array_equal(te.images.reshape(3, -1), ref[5][1])


def test_cifar100_fine_and_coarse(tmp_path):
    rng = np.random.default_rng(2)
    labels, pixels, raw = _cifar_records(rng, 4, 2)
    (tmp_path / "train.bin").write_bytes(raw)
    fine, coarse = data.cifar100(tmp_path), data.cifar100(tmp_path, label="coarse")
    np.testing.assert_array_equal(fine.labels, labels[:, 1])
    np.testing.assert_array_equal(coarse.labels, labels[:, 0])
    np.testing.assert_array_equal(fine.images.reshape(4, -1), pixels)
    assert fine.num_classes == 100 and coarse.num_classes == 20


def test_cifar_errors(tmp_path):
    with pytest.raises(data.DatasetNotFoundError, match="cifar-10-binary.tar.gz"):
        data.cifar10(tmp_path)
    (tmp_path / "test_batch.bin").write_bytes(b"\0" * 3074)
    with pytest.raises(ValueError, match="3073-byte CIFAR records"):
        data.cifar10(tmp_path, train=False)
    with pytest.raises(ValueError, match="label_bytes"):
        data.read_cifar_batch(tmp_path / "test_batch.bin", 3)


# ---------------------------------------------------- synthetic, dispatcher
def test_synthetic_is_deterministic_and_learnable_shape():
    a, b = data.synthetic(64, (3, 8, 8), 4, seed=3), data.synthetic(64, (3, 8, 8), 4, seed=3)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.images.shape == (64, 3, 8, 8) and set(a.labels.tolist()) <= set(range(4))
    c = data.synthetic(64, (3, 8, 8), 4, seed=4)
    assert not np.array_equal(a.images, c.images)
    # class means differ more than within-class spread: a nearest-template classifier is near perfect
    x = a.images.reshape(64, -1).astype(np.float64)
    means = np.stack([x[a.labels == k].mean(0) for k in range(4)])
    pred = np.argmin(((x[:, None] - means[None]) ** 2).sum(-1), 1)
    assert (pred == a.labels).mean() > 0.95


def test_get_dataset_and_limit(tmp_path):
    _mnist_dir(tmp_path)
    assert len(data.get_dataset("fashion-mnist", tmp_path, limit=7)) == 7
    assert len(data.get_dataset("FASHION_MNIST", tmp_path, train=False)) == 5
    s = data.get_dataset("synthetic", train=False, limit=10, image_shape=(3, 32, 32))
    assert len(s) == 10 and s.image_shape == (3, 32, 32)
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        data.get_dataset("imagenet")


def test_array_dataset_validation():
    with pytest.raises(ValueError, match="labels must be"):
        data.ArrayDataset(np.zeros((3, 1, 2, 2)), np.zeros(4, int))
    with pytest.raises(TypeError, match="integers"):
        data.ArrayDataset(np.zeros((3, 1, 2, 2)), np.zeros(3))
    with pytest.raises(ValueError, match="images must be"):
        data.ArrayDataset(np.zeros((3, 2)), np.zeros(3, int))


# ---------------------------------------------------------------- loader
def _ds(n=10):
    imgs = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1) * np.ones((1, 1, 2, 2), np.uint8)
    return data.ArrayDataset(imgs, np.arange(n) % 3)


def test_loader_batches_in_order():
    dl = data.DataLoader(_ds(10), batch_size=4)
    batches = list(dl)
    assert len(dl) == 3 and [len(y) for _, y in batches] == [4, 4, 2]
    x, y = batches[0]
    assert x.dtype == np.float32 and y.dtype == np.int64 and x.shape == (4, 1, 2, 2)
    np.testing.assert_allclose(x[:, 0, 0, 0], np.arange(4) / 255, rtol=1e-6)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), np.arange(10) % 3)


def test_loader_drop_last():
    dl = data.DataLoader(_ds(10), batch_size=4, drop_last=True)
    assert len(dl) == 2 and [len(y) for _, y in dl] == [4, 4]
    assert len(data.DataLoader(_ds(3), 4, drop_last=True)) == 0


def _order(dl):
    return np.concatenate([np.rint(x[:, 0, 0, 0] * 255).astype(int) for x, _ in dl])


def test_loader_seeded_shuffle():
    d = _ds(50)
    a = data.DataLoader(d, 8, shuffle=True, seed=5)
    b = data.DataLoader(d, 8, shuffle=True, seed=5)
    e0a, e0b = _order(a), _order(b)
    np.testing.assert_array_equal(e0a, e0b)                      # same seed, same order
    assert sorted(e0a.tolist()) == list(range(50))               # a permutation: every sample once
    assert not np.array_equal(e0a, np.arange(50))
    e1 = _order(a)
    assert not np.array_equal(e0a, e1)                           # a new order each epoch
    b.set_epoch(1)
    np.testing.assert_array_equal(_order(b), e1)                 # resumable at any epoch
    c = data.DataLoader(d, 8, shuffle=True, seed=6)
    assert not np.array_equal(_order(c), e0a)


def test_loader_labels_follow_images():
    d = data.synthetic(40, (1, 3, 3), 5, seed=0)
    dl = data.DataLoader(d, 7, shuffle=True, seed=1)
    for x, y in dl:
        for xi, yi in zip(x, y):
            j = np.flatnonzero((d.images.reshape(40, -1) == np.rint(xi.reshape(-1) * 255)).all(1))
            assert yi in d.labels[j]


def test_loader_errors():
    with pytest.raises(ValueError, match="batch_size"):
        data.DataLoader(_ds(), 0)
    with pytest.raises(TypeError, match="images"):
        data.DataLoader([1, 2, 3], 2)


# ------------------------------------------------------------ transforms
def test_normalize_per_channel():
    x = np.random.default_rng(0).random((2, 3, 4, 4)).astype(np.float32)
    y = data.Normalize((0.1, 0.2, 0.3), (0.5, 0.25, 2.0))(x)
    for c, (m, s) in enumerate(((0.1, 0.5), (0.2, 0.25), (0.3, 2.0))):
        np.testing.assert_allclose(y[:, c], (x[:, c] - m) / s, rtol=1e-6, atol=1e-6)
    assert y.dtype == np.float32
    with pytest.raises(ValueError, match="3 channels"):
        data.Normalize((0.1, 0.2), (1, 1))(x)
    with pytest.raises(ValueError, match="non-zero"):
        data.Normalize(0.0, 0.0)


def test_pad_to_32_centers():
    x = np.ones((2, 1, 28, 28), np.float32)
    y = data.PadTo(32)(x)
    assert y.shape == (2, 1, 32, 32)
    assert y[:, :, 2:30, 2:30].min() == 1 and y.sum() == x.sum()
    assert data.PadTo(32)(x[0]).shape == (1, 32, 32)
    with pytest.raises(ValueError, match="larger than the target"):
        data.PadTo(16)(x)
    np.testing.assert_array_equal(data.Pad(1)(x)[:, :, 1:-1, 1:-1], x)


def test_random_crop_is_a_window_of_the_padded_image():
    rng_x = np.random.default_rng(0)
    x = rng_x.random((16, 3, 8, 8)).astype(np.float32)
    y = data.RandomCrop(8, padding=2)(x, np.random.default_rng(1))
    assert y.shape == x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    offsets = set()
    for i in range(16):
        hits = [(a, b) for a in range(5) for b in range(5) if np.array_equal(xp[i, :, a:a + 8, b:b + 8], y[i])]
        assert hits, f"image {i} is not a crop of its padded input"
        offsets.add(hits[0])
    assert len(offsets) > 3                                        # offsets differ between images
    y2 = data.RandomCrop(8, padding=2)(x, np.random.default_rng(1))
    np.testing.assert_array_equal(y, y2)                           # reproducible for a seed
    with pytest.raises(ValueError, match="larger than the padded"):
        data.RandomCrop(13, padding=2)(x)


def test_random_flip():
    x = np.random.default_rng(0).random((32, 2, 3, 5)).astype(np.float32)
    y = data.RandomHorizontalFlip(0.5)(x, np.random.default_rng(3))
    flipped = [np.array_equal(y[i], x[i, :, :, ::-1]) for i in range(32)]
    kept = [np.array_equal(y[i], x[i]) for i in range(32)]
    assert all(f or k for f, k in zip(flipped, kept)) and 4 < sum(flipped) < 28
    np.testing.assert_array_equal(data.RandomHorizontalFlip(1.0)(x), x[:, :, :, ::-1])
    np.testing.assert_array_equal(data.RandomHorizontalFlip(0.0)(x), x)


def test_loader_applies_seeded_transform():
    d = data.synthetic(20, (1, 6, 6), 3)
    tf = data.Compose([data.RandomCrop(6, padding=1), data.RandomHorizontalFlip()])
    a = [x for x, _ in data.DataLoader(d, 5, shuffle=True, seed=2, transform=tf)]
    b = [x for x, _ in data.DataLoader(d, 5, shuffle=True, seed=2, transform=tf)]
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert a[0].shape == (5, 1, 6, 6) and a[0].flags.c_contiguous
