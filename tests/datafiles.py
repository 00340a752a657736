"""Small files in the standard on-disk formats of online datasets (MNIST IDX, CIFAR-10 batches),
so the real loaders are tested without a download."""
import gzip
import pickle
import struct

import numpy as np

CIFAR10_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def write_idx(path, array, compress=False):
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def write_mnist(root, n_train=60, n_test=15, size=12, compress=False, seed=0):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    write_idx(root / "train-images-idx3-ubyte", rng.integers(0, 256, (n_train, size, size)), compress)
    write_idx(root / "train-labels-idx1-ubyte", np.arange(n_train) % 10, compress)
    write_idx(root / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, size, size)), compress)
    write_idx(root / "t10k-labels-idx1-ubyte", np.arange(n_test) % 10, compress)


def write_cifar10(root, per_batch=10, n_test=7, seed=0):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(np.arange(n) % 10)}
        (root / name).write_bytes(pickle.dumps(batch))
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": CIFAR10_NAMES}))


def build_dm(config_cls, seed=0, **kw):
    """A set-up datamodule from one data schema (TabularDataConfig, TextDataConfig, ...) and its keys."""
    from omegaconf import OmegaConf

    import datamodules

    dm = datamodules.build(OmegaConf.structured(config_cls(**kw)), seed)
    dm.setup()
    return dm


def write_table(tmp_path, df, name="data.csv"):
    """Write `df` as CSV (or Parquet for a .parquet name) under tmp_path; returns the path as str."""
    path = tmp_path / name
    df.to_parquet(path) if name.endswith(".parquet") else df.to_csv(path, index=False)
    return str(path)


def synthetic_table(n, n_features=8, seed=0, classes=3):
    """A learnable table: numeric columns f0.., a categorical 'colour', and a class 'label' from a linear rule."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_features)).astype(np.float32)
    colour = rng.choice(["red", "green", "blue"], size=n)
    score = x[:, 0] + 0.5 * x[:, 1] - 0.5 * x[:, 2] + (colour == "red") * 0.8
    edges = np.quantile(score, np.linspace(0, 1, classes + 1)[1:-1])
    df = pd.DataFrame(x, columns=[f"f{i}" for i in range(n_features)])
    df["colour"] = colour
    df["label"] = np.searchsorted(edges, score)
    return df


def write_shards(root, df, shards=4, fmt="parquet", row_group_size=None):
    """`df` as `shards` files part-00000.<fmt>, ... under root (made); returns root as str."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(np.array_split(np.arange(len(df)), shards)):
        piece = df.iloc[part]
        path = root / f"part-{i:05d}.{fmt}"
        if fmt == "parquet":
            pq.write_table(pa.Table.from_pandas(piece, preserve_index=False), path,
                           row_group_size=row_group_size or len(piece))
        else:
            piece.to_csv(path, index=False)
    return str(root)
