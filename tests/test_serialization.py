"""fastconv.save / fastconv.load: safetensors bytes, atomic writes, clear errors, optimizer state."""
import json
import os
import struct

import numpy as np
import pytest

import fastconv
from fastconv import Tensor, nn, optim


def _read_independently(path):
    """A safetensors reader written from the format description (not fastconv's code)."""
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    kinds = {"F32": "<f4", "F64": "<f8", "I64": "<i8", "F16": "<f2", "U8": "u1", "BOOL": "?", "I32": "<i4"}
    out = {}
    for k, e in header.items():
        if k == "__metadata__":
            continue
        b, end = e["data_offsets"]
        out[k] = np.frombuffer(data[b:end], kinds[e["dtype"]]).reshape(e["shape"])
    return header, out, n


def test_state_dict_roundtrip_and_format(tmp_path, rng):
    sd = {"a.weight": rng.standard_normal((3, 4)).astype(np.float32), "a.bias": np.arange(3.0),
          "n": np.array(7, np.int64), "h": rng.standard_normal(5).astype(np.float16),
          "m": np.array([True, False]), "empty": np.zeros((0, 3), np.float32),
          "t": Tensor(np.ones(2, np.float32)), "nc": rng.standard_normal((4, 6))[:, ::2]}
    path = tmp_path / "ck.safetensors"
    fastconv.save(sd, path)
    header, indep, n = _read_independently(path)
    assert n % 8 == 0 and header["a.weight"]["dtype"] == "F32" and header["n"]["shape"] == []
    back = fastconv.load(path)
    assert set(back) == set(sd)
    for k, v in sd.items():
        v = v.data if isinstance(v, Tensor) else v
        np.testing.assert_array_equal(back[k], v)
        np.testing.assert_array_equal(indep[k], v)
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
    assert back["a.weight"].flags.writeable


def test_reads_independently_written_file(tmp_path):
    a = np.arange(6, dtype="<f4").reshape(2, 3)
    b = np.array([1, -2], "<i8")
    header = {"b": {"dtype": "I64", "shape": [2], "data_offsets": [24, 40]},
              "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}
    hb = json.dumps(header).encode()
    p = tmp_path / "x.safetensors"
    p.write_bytes(struct.pack("<Q", len(hb)) + hb + a.tobytes() + b.tobytes())
    back = fastconv.load(p)
    np.testing.assert_array_equal(back["a"], a)
    np.testing.assert_array_equal(back["b"], b)


@pytest.mark.parametrize("damage", ["short", "huge_header", "not_json", "bad_dtype", "bad_offsets", "overlap",
                                    "pickle"])
def test_corrupt_or_foreign_files_raise_value_error(tmp_path, damage):
    p = tmp_path / "bad.safetensors"
    fastconv.save({"w": np.ones((2, 2), np.float32), "v": np.ones(3, np.float32)}, p)
    raw = bytearray(p.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    if damage == "short":
        raw = raw[:5]
    elif damage == "huge_header":
        raw[:8] = struct.pack("<Q", 10 ** 12)
    elif damage == "not_json":
        raw[8:12] = b"\xff\xfe{["
    else:
        if damage == "bad_dtype":
            header["w"]["dtype"] = "Q99"
        elif damage == "bad_offsets":
            header["w"]["data_offsets"] = [0, 4]
        elif damage == "overlap":
            header["v"]["data_offsets"] = [0, 12]
            header["w"]["data_offsets"] = [4, 20]
        elif damage == "pickle":
            raw = bytearray(b"\x80\x04\x95" + b"\x00" * 40)
        if damage != "pickle":
            hb = json.dumps(header).encode()
            raw = bytearray(struct.pack("<Q", len(hb)) + hb + raw[8 + n:])
    p.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="not a valid safetensors checkpoint"):
        fastconv.load(p)


def test_atomic_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    p = tmp_path / "ck.safetensors"
    fastconv.save({"w": np.ones(4, np.float32)}, p)

    class Boom(Exception):
        pass

    real_fsync = os.fsync

    def failing_fsync(fd):
        raise Boom("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(Boom):
        fastconv.save({"w": np.zeros(4, np.float32)}, p)
    monkeypatch.setattr(os, "fsync", real_fsync)
    np.testing.assert_array_equal(fastconv.load(p)["w"], np.ones(4))  # the old checkpoint is intact
    assert [f.name for f in tmp_path.iterdir()] == ["ck.safetensors"]  # no temporary left behind


def test_model_and_optimizer_checkpoint(tmp_path, rng):
    pytest.importorskip("fastconv.ops.layers", reason="fastconv.ops.layers (Linear's op) is not available")
    net = nn.Sequential(nn.Linear(4, 3, generator=1), nn.ReLU(), nn.Linear(3, 2, generator=2))
    opt = optim.Adam(net.parameters(), lr=1e-2)
    x = Tensor(rng.standard_normal((5, 4)).astype(np.float32))
    net(x).sum().backward()
    opt.step()
    fastconv.save(net.state_dict(), tmp_path / "model.safetensors")
    fastconv.save(opt.state_dict(), tmp_path / "opt.safetensors")
    net2 = nn.Sequential(nn.Linear(4, 3, generator=5), nn.ReLU(), nn.Linear(3, 2, generator=6))
    net2.load_state_dict(fastconv.load(tmp_path / "model.safetensors"))
    opt2 = optim.Adam(net2.parameters(), lr=0.5)
    osd = fastconv.load(tmp_path / "opt.safetensors")
    assert osd["param_groups"][0]["betas"] == (0.9, 0.999) and osd["state"][0]["step"] == 1
    opt2.load_state_dict(osd)
    for o, n in ((opt, net), (opt2, net2)):
        o.zero_grad()
        n(x).sum().backward()
        o.step()
    for a, b in zip(net.parameters(), net2.parameters()):
        np.testing.assert_array_equal(a.data, b.data)


def test_load_torch_state_dict_into_module(tmp_path, torch):
    tm = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3))
    m = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3))
    m.load_state_dict(tm.state_dict())
    np.testing.assert_array_equal(m[0].weight.data, tm[0].weight.detach().numpy())
    fastconv.save(tm.state_dict(), tmp_path / "t.safetensors")  # torch tensors are accepted by save too
    back = fastconv.load(tmp_path / "t.safetensors")
    np.testing.assert_array_equal(back["1.running_var"], tm[1].running_var.numpy())


def test_save_rejects_unstorable(tmp_path):
    with pytest.raises(TypeError, match="cannot store"):
        fastconv.save({"a": object()}, tmp_path / "x.safetensors")
    with pytest.raises(TypeError, match="complex128"):
        fastconv.save({"a": np.zeros(2, np.complex128)}, tmp_path / "x.safetensors")


# ---------------------------------------------- fixes from a fuzz of save/load
def test_metadata_named_entries_round_trip(tmp_path):
    # "__metadata__" is the header's own key: a dict entry of that name overwrote the header's
    # slot (the whole nested object came back as {})
    for obj in ({"__metadata__": np.ones(3), "epoch": 1}, {"__metadata__": np.ones(3), "w": np.zeros(2)}):
        p = tmp_path / "m.safetensors"
        fastconv.save(obj, p)
        back = fastconv.load(p)
        assert sorted(back) == sorted(obj)
        for k, v in obj.items():
            np.testing.assert_array_equal(back[k], v)


@pytest.mark.parametrize("shape", [[True], [2 ** 32, 2 ** 32], [2 ** 63, 2], [0, 2 ** 62, 2 ** 62]])
def test_malformed_shapes_raise_value_error_naming_the_file(tmp_path, shape):
    p = tmp_path / "bad.safetensors"
    header = {"x": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}}
    hb = json.dumps(header).encode()
    p.write_bytes(struct.pack("<Q", len(hb)) + hb)
    with pytest.raises(ValueError, match="bad.safetensors"):
        fastconv.load(p)


def test_deeply_nested_structure_raises_value_error(tmp_path):
    p = tmp_path / "deep.safetensors"
    tree = '{"__list__": [' * 100000 + ']}' * 100000
    hb = json.dumps({"__metadata__": {"fastconv.tree": tree}}).encode()
    p.write_bytes(struct.pack("<Q", len(hb)) + hb)
    with pytest.raises(ValueError, match="deep.safetensors"):
        fastconv.load(p)
