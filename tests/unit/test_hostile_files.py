"""Files a user points dlpipe at, or a model store hands back, are data: a crafted one is refused in one line and
runs nothing. CIFAR-10's pickled batches go through an unpickler that admits numpy arrays only; a logged model's
files must match the sha256 digests recorded when it was logged, and its net.pt2 may hold no pickle."""
import builtins
import io
import os
import pickle

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
