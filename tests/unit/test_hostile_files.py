"""Files a user points dlpipe at, or a model store hands back, are data: a crafted one is refused in one line and
runs nothing. CIFAR-10's pickled batches go through an unpickler that admits numpy arrays only; a logged model's
files must match the sha256 digests recorded when it was logged, and its net.pt2 may hold no pickle."""
import builtins
import io
import os
import pickle
import zipfile

import numpy as np
import pytest

from datamodules import DataError
from datamodules.image import read_cifar10
from tests.datafiles import write_cifar10


class _Runs:
    """Unpickling this calls `fn(arg)`: what a crafted file does to a plain pickle.load."""

    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


class _Python2Pickler(pickle._Pickler):
    """Pickles as Python 2 did the official batches: bytes (Python 2's str) as SHORT_BINSTRING/BINSTRING opcodes,
    where Python 3's protocol 2 would call _codecs.encode."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_str2(self, obj):
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + n.to_bytes(4, "little"))
                   + obj)
        self.memoize(obj)

    dispatch[bytes] = save_str2


def _python2_pickle(obj) -> bytes:
    out = io.BytesIO()
    _Python2Pickler(out, protocol=2).dump(obj)
    return out.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")  # GLOBAL names are text lines


def _touch(marker):
    return f"open({str(marker)!r}, 'w').close()"


@pytest.mark.parametrize("how", ["os.system", "builtins.exec", "inside b'data'"])
def test_a_crafted_cifar_batch_runs_nothing(tmp_path, how):
    write_cifar10(tmp_path)
    marker = tmp_path / "marker"
    evil = {"os.system": _Runs(os.system, f"touch {marker}"), "builtins.exec": _Runs(builtins.exec, _touch(marker)),
            "inside b'data'": {b"data": _Runs(builtins.exec, _touch(marker)), b"labels": [0]}}[how]
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps(evil))
    with pytest.raises(DataError, match=r"CIFAR-10 file '.*data_batch_3' is not a CIFAR-10 python batch "
                                        r"\(it names (posix\.system|builtins\.exec), which the format never needs\)"):
        read_cifar10(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("content,says", [
    (b"\x80\x04\x95 garbage", "is not a CIFAR-10 python batch"),                       # corrupt
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)})[:-20], "is not a CIFAR-10 python batch"),  # truncated
    (pickle.dumps([1, 2, 3]), r"is not a dict with keys b'data', b'labels'"),
    (pickle.dumps({b"data": "pixels", b"labels": [0]}), "is not a CIFAR-10 batch"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}), "is not a CIFAR-10 batch"),
    (pickle.dumps({b"data": np.zeros((2, 3072), object), b"labels": [0, 1]}), "is not a CIFAR-10 batch"),
])
def test_a_broken_cifar_batch_is_one_line(tmp_path, content, says):
    write_cifar10(tmp_path)
    (tmp_path / "test_batch").write_bytes(content)
    with pytest.raises(DataError, match=f"CIFAR-10 file '.*test_batch' {says}") as info:
        read_cifar10(tmp_path)
    assert "\n" not in str(info.value)


def test_a_meta_file_without_label_names_is_refused(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "batches.meta").write_bytes(pickle.dumps({b"label_names": b"cat"}))
    with pytest.raises(DataError, match="batches.meta' has no list of b'label_names'"):
        read_cifar10(tmp_path)


def test_genuine_cifar_batches_still_load(tmp_path):
    write_cifar10(tmp_path)   # labels as numpy integers (numpy 2 pickles: numpy._core.multiarray.scalar)
    # the official files: written by Python 2's numpy (numpy.core.multiarray), plain int labels, batch_label, filenames
    batch = {b"batch_label": b"testing batch 1 of 1", b"labels": [3, 8, 8],
             b"data": np.arange(3 * 3072, dtype=np.int64).astype(np.uint8).reshape(3, 3072),
             b"filenames": [b"a.png", b"b.png", b"c.png"]}
    raw = _python2_pickle(batch)
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw and b"_codecs" not in raw
    (tmp_path / "test_batch").write_bytes(raw)
    x, y, xt, yt, names = read_cifar10(tmp_path)
    assert x.shape == (50, 3, 32, 32) and x.dtype == np.uint8 and y.dtype == np.int64
    assert list(y[:12]) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert list(yt) == [3, 8, 8] and np.array_equal(xt.reshape(3, -1), batch[b"data"])
    assert names[:2] == ["airplane", "automobile"]


# ---- logged models: digests and pickle data ---------------------------------------------------------------------

def test_a_changed_missing_or_added_model_file_is_named(tmp_path):
    from pipelines.tracking import model_trust

    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "preprocess.py").write_text("x = 1\n")
    (tmp_path / "MLmodel").write_text("flavors: {}\n")
    (tmp_path / "registered_model_meta").write_text("model_name: null\n")   # MLflow's downloader writes it
    files = model_trust.manifest(tmp_path)
    assert sorted(files) == ["MLmodel", "code/preprocess.py"]
    recorded = model_trust.encode(files)
    assert model_trust.difference(recorded, files) is None
    (tmp_path / "code" / "preprocess.py").write_text("x = 1\nimport os\n")
    assert model_trust.difference(recorded, model_trust.manifest(tmp_path)) == "code/preprocess.py changed"
    (tmp_path / "code" / "preprocess.py").unlink()
    assert model_trust.difference(recorded, model_trust.manifest(tmp_path)) == "code/preprocess.py is missing"
    (tmp_path / "code" / "preprocess.py").write_text("x = 1\n")
    (tmp_path / "python_model.pkl").write_bytes(b"")
    assert model_trust.difference(recorded, model_trust.manifest(tmp_path)) == "python_model.pkl was added"
    assert model_trust.difference("not json", files).startswith("the recorded dlp.model_sha256 tag is not")


def test_a_manifest_longer_than_a_tag_is_recorded_as_its_digest():
    from pipelines.tracking import model_trust

    files = {f"file_{i}": "0" * 64 for i in range(200)}
    recorded = model_trust.encode(files)
    assert recorded.startswith("sha256:") and len(recorded) == 71   # MLflow caps a tag value at 8000 characters
    assert model_trust.difference(recorded, files) is None
    assert model_trust.difference(recorded, {**files, "file_7": "1" * 64}) == "one or more files changed"
    assert model_trust.encode({"a": "0" * 64}).startswith("{")


def _zip(members: dict) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return out.getvalue()


def _genuine_archive(tmp_path, keep_example_inputs=False) -> bytes:
    import torch

    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU()).eval()
    program = torch.export.export(net, (torch.randn(4, 3),), dynamic_shapes=({0: torch.export.Dim("b", min=1)},))
    if not keep_example_inputs:
        program.example_inputs = None   # as pipelines.tracking.model.log_model saves it
    torch.export.save(program, tmp_path / "net.pt2")
    return (tmp_path / "net.pt2").read_bytes()


def test_pickle_data_in_an_archive_is_found(tmp_path):
    import torch

    from pipelines.tracking.model_trust import find_pickle

    evil = pickle.dumps(_Runs(os.system, "touch marker"))
    saved = io.BytesIO()
    torch.save({"w": torch.ones(2)}, saved)       # a zip holding data.pkl, as pickled weights would be
    raw = np.random.default_rng(0).standard_normal(4096).astype(np.float32).tobytes()
    legacy = pickle.dumps(119547037146038801333356) + pickle.dumps(1001) + evil   # torch's legacy format
    assert find_pickle("net.pt2", _zip({"net/data/weights/weight_0": evil})) == "net.pt2: net/data/weights/weight_0"
    assert find_pickle("net.pt2", _zip({"net/data/weights/weight_0": saved.getvalue()})) \
        == "net.pt2: net/data/weights/weight_0: archive/data.pkl"
    assert find_pickle("net.pt2", _zip({"net/x/data.pkl": b"anything"})) == "net.pt2: net/x/data.pkl"
    assert find_pickle("net.pt2", _zip({"a": _zip({"b": _zip({"c": legacy})})})) == "net.pt2: a: b: c"
    assert find_pickle("net.pt2", _zip({"a": raw, "b": b"N." + raw, "c": b'{"json": 1}'})) is None
    assert find_pickle("net.pt2", b"PK\x03\x04 truncated") == "net.pt2 (an unreadable archive)"
    # torch.export.save pickles an exported program's example inputs (and torch.export.load unpickles them, with a
    # code-running fallback): dlpipe saves without them, so its archives hold JSON and raw tensor bytes only
    assert find_pickle("net.pt2", _genuine_archive(tmp_path)) is None
    with_inputs = find_pickle("net.pt2", _genuine_archive(tmp_path, keep_example_inputs=True))
    assert with_inputs.startswith("net.pt2: net/data/sample_inputs/model.pt: ") and with_inputs.endswith("data.pkl")


def test_random_tensor_bytes_are_not_taken_for_pickles():
    from pipelines.tracking.model_trust import find_pickle

    rng = np.random.default_rng(1)
    blobs = [rng.standard_normal(rng.integers(1, 64)).astype(np.float32).tobytes() for _ in range(3000)]
    blobs += [bytes(rng.integers(0, 256, 32, dtype=np.uint8)) for _ in range(3000)]
    assert [b for b in blobs if find_pickle("w", b)] == []
    # floats whose bytes parse as opcodes up to a STOP, one of them STACK_GLOBAL: not a pickle (nothing on its stack)
    coincidence = np.frombuffer(b"\x93.\x00\x00" + b"N\x93.\x00", dtype=np.float32)
    assert np.isfinite(coincidence).all() and find_pickle("w", coincidence.tobytes()) is None
