"""Fast tests of datamodules/: splits, train-only statistics, preprocessing round trips, errors,
loaders (including simulated distributed sharding) and every image source on tiny files."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import datamodules
from datamodules import DataError, DataSpec, loader as loading, preprocess
from datamodules.base import split_indices
from datamodules.loader import BatchLoader, shard_indices
from datamodules.image import Augment
from datamodules.tabular import infer_task
from pipelines.config.data_schema import AugmentConfig, ImageDataConfig, TabularDataConfig
from tests.datafiles import build_dm, write_cifar10, write_mnist, write_table


def tabular(seed=0, **kw):
    return build_dm(TabularDataConfig, seed, **kw)


def image(seed=0, **kw):
    return build_dm(ImageDataConfig, seed, **kw)


write_csv = write_table


def people(n=120, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "age": rng.integers(18, 80, n).astype(float),
        "income": rng.normal(50, 10, n),
        "city": rng.choice(["paris", "rome", "oslo"], n),
        "label": rng.choice(["no", "yes"], n),
    })


# ---- splits --------------------------------------------------------------------------------

def test_splits_disjoint_cover_and_stratified():
    y = np.array([0] * 160 + [1] * 40)
    train, val, test = split_indices(y, 0.2, 0.1, seed=3, stratify=True)
    assert (len(train), len(val), len(test)) == (140, 40, 20)
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    assert sorted(np.concatenate([train, val, test])) == list(range(200))
    for part in (train, val, test):
        assert abs(y[part].mean() - 0.2) < 0.03
    again = split_indices(y, 0.2, 0.1, seed=3, stratify=True)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again))


def test_split_errors_and_stratify_fallback():
    with pytest.raises(DataError, match="data.val_fraction: 0.01 of 20 rows leaves the val split empty"):
        split_indices(np.zeros(20, int), 0.01, 0.2, 0, True)
    with pytest.raises(DataError, match="data.test_fraction"):
        split_indices(np.zeros(20, int), 0.2, 1.5, 0, True)
    y = np.array([0] * 30 + [1])    # one row of class 1 cannot be stratified
    with pytest.warns(UserWarning, match="data.stratify"):
        train, val, test = split_indices(y, 0.2, 0.2, 0, True)
    assert len(train) + len(val) + len(test) == 31


# ---- tabular -------------------------------------------------------------------------------

def test_shipped_tables_and_spec():
    dm = tabular(source="iris")
    assert dm.spec.task == "classification" and dm.spec.num_classes == 3
    assert dm.spec.class_names == ["setosa", "versicolor", "virginica"]
    assert dm.spec.input_shape == (4,) and len(dm.spec.feature_names) == 4
    reg = tabular(source="diabetes")
    assert reg.spec.task == "regression" and reg.spec.num_classes == 0 and reg.spec.class_names == []
    x, y = next(iter(reg.val_dataloader()))
    assert x.dtype == torch.float32 and y.dtype == torch.float32


def test_scaling_fitted_on_train_only_and_transform_round_trip():
    dm = tabular(source="wine", seed=1)
    train, _ = dm.raw_frame("train")
    full = pd.concat([dm.raw_frame(s)[0] for s in ("train", "val", "test")])
    col = dm.spec.feature_names[0]
    mean, std = dm.prep["numeric"][col]
    assert mean == pytest.approx(train[col].mean()) and std == pytest.approx(train[col].std(ddof=0))
    assert mean != pytest.approx(full[col].mean(), abs=1e-9)
    assert dm._tensors["train"][0].mean(0).abs().max() < 1e-5
    for split in ("train", "test"):
        frame, labels = dm.raw_frame(split)
        assert list(frame.columns) == dm.spec.feature_names
        assert np.array_equal(dm.transform_frame(frame), dm._tensors[split][0].numpy())
        assert len(labels) == len(frame) and set(labels) <= set(dm.spec.class_names)


def test_csv_categorical_one_hot_and_unseen(tmp_path):
    dm = tabular(path=write_csv(tmp_path, people()), target="label")
    assert dm.prep["categorical"] == {"city": ["oslo", "paris", "rome"]}
    assert dm.spec.input_shape == (5,) and dm.spec.class_names == ["no", "yes"]
    rows = pd.DataFrame({"age": ["40", 50], "income": [50.0, 60.0], "city": ["rome", "tokyo"]})  # "40" as from JSON
    x = preprocess.transform(rows, dm.prep)
    assert x.dtype == np.float32 and x.shape == (2, 5)
    assert x[0, 2:].tolist() == [0, 0, 1] and x[1, 2:].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="input is missing column 'city'"):
        preprocess.transform(rows.drop(columns="city"), dm.prep)


def test_integer_coded_categorical_matches_float_input():
    df = pd.DataFrame({"code": [1, 2, 3, 1], "v": [0.5, 1.0, 1.5, 2.0]})
    prep = preprocess.fit_tabular(df, ["code", "v"], ["code"], "error")
    assert prep["categorical"]["code"] == ["1", "2", "3"]
    as_float = pd.DataFrame({"code": [2.0, np.nan], "v": [1.0, 1.0]})
    assert preprocess.transform(as_float, prep)[:, 1:].tolist() == [[0, 1, 0], [0, 0, 0]]


def test_missing_values_error_drop_impute(tmp_path):
    df = people()
    df.loc[[3, 7, 9], "age"] = np.nan
    df.loc[5, "city"] = np.nan
    path = write_csv(tmp_path, df)
    with pytest.raises(DataError) as err:
        tabular(path=path, target="label")
    msg = str(err.value)
    assert "\n" not in msg and "'age' (3)" in msg and "'city' (1)" in msg and "data.missing=impute" in msg
    with pytest.raises(DataError, match=r"^data: column 'age' has 3 missing values; set data.missing=drop"):
        tabular(path=path, target="label", features=["age", "income"])
    dropped = tabular(path=path, target="label", missing="drop")
    assert sum(dropped.fingerprint()[f"n_{s}"] for s in ("train", "val", "test")) == 116
    imputed = tabular(path=path, target="label", missing="impute")
    assert sum(imputed.fingerprint()[f"n_{s}"] for s in ("train", "val", "test")) == 120
    train, _ = imputed.raw_frame("train")
    assert imputed.prep["impute"]["age"] == pytest.approx(train["age"].median())
    assert not torch.isnan(imputed._tensors["train"][0]).any()
    frame, _ = imputed.raw_frame("test")
    assert np.array_equal(imputed.transform_frame(frame), imputed._tensors["test"][0].numpy())
    # a model trained without imputation refuses NaNs instead of predicting garbage
    with pytest.raises(ValueError, match="column 'age' has missing values"):
        preprocess.transform(df.head(10), dropped.prep)


def test_file_and_column_errors(tmp_path):
    with pytest.raises(DataError, match=r"^data.path: file '.*nope.csv' does not exist$"):
        tabular(path=str(tmp_path / "nope.csv"), target="label")
    path = write_csv(tmp_path, people())
    with pytest.raises(DataError, match=r"data.target: column 'y' not in data.csv \(columns: age, income, city, lab"):
        tabular(path=path, target="y")
    with pytest.raises(DataError, match="data.target: required"):
        tabular(path=path)
    with pytest.raises(DataError, match="data.source: unknown 'excel'; choose one of csv, parquet"):
        tabular(source="excel")
    with pytest.raises(DataError, match="data.features: column 'height' not in data.csv"):
        tabular(path=path, target="label", features=["height"])
    with pytest.raises(DataError, match="data.kind: unknown 'audio'"):
        datamodules.build(OmegaConf.create({"kind": "audio"}), 0)


def test_parquet_by_suffix(tmp_path):
    path = tmp_path / "data.parquet"
    people().to_parquet(path)
    dm = tabular(path=str(path), target="label")
    assert dm.fingerprint()["source"].startswith("parquet:") and dm.spec.num_classes == 2


def test_task_inference(tmp_path):
    s = pd.Series
    assert infer_task(s(["a", "b"]), 50) == "classification"
    assert infer_task(s([True, False]), 50) == "classification"
    assert infer_task(s([0, 1, 2, 1]), 50) == "classification"
    assert infer_task(s([0.0, 1.0, np.nan]), 50) == "classification"
    assert infer_task(s([0.5, 1.2, 3.0]), 50) == "regression"
    assert infer_task(s(range(100)), 50) == "regression"
    df = people()
    df["score"] = np.arange(len(df)) * 0.5
    dm = tabular(path=write_csv(tmp_path, df), target="score", features=["age", "income"])
    assert dm.spec.task == "regression" and dm._tensors["train"][1].dtype == torch.float32
    df["grade"] = np.arange(len(df)) % 3 + 1
    dm = tabular(path=write_csv(tmp_path, df), target="grade", features=["age"])
    assert dm.spec.class_names == ["1", "2", "3"] and set(dm._tensors["train"][1].tolist()) == {0, 1, 2}


def test_class_weights_and_oversampling(tmp_path):
    df = people(400)
    df["label"] = np.where(np.arange(400) % 5 == 0, "rare", "common")
    path = write_csv(tmp_path, df)
    dm = tabular(path=path, target="label", balance="weights")
    w = dm.spec.class_weights
    assert np.mean(w) == pytest.approx(1.0) and w[dm.spec.class_names.index("rare")] > w[0]
    assert w[1] / w[0] == pytest.approx(4.0, rel=0.1)
    over = tabular(path=path, target="label", balance="oversample", batch_size=1000)
    y = torch.cat([b[1] for epoch in range(5) for b in over.train_dataloader()])
    assert abs(y.float().mean().item() - 0.5) < 0.06   # ~50/50 instead of 20/80
    with pytest.raises(DataError, match="data.balance: 'weights' needs a classification task"):
        tabular(source="diabetes", balance="weights")


def test_fingerprint_stable_per_seed():
    a, b, c = tabular(source="iris", seed=7), tabular(source="iris", seed=7), tabular(source="iris", seed=8)
    fa = a.fingerprint()
    assert fa == b.fingerprint() and fa["hash"] != c.fingerprint()["hash"]
    assert fa["source"] == "sklearn:iris" and fa["n_train"] + fa["n_val"] + fa["n_test"] == 150
    a.setup()    # idempotent: no reload, same tensors
    assert a.fingerprint() == fa


def test_train_loader_drops_a_lone_last_sample():
    dm = tabular(source="iris", batch_size=105)     # 106 train rows: a batch of 1 would break BatchNorm
    assert [len(b[0]) for b in dm.train_dataloader()] == [105]
    assert sum(len(b[0]) for b in dm.val_dataloader()) == dm.fingerprint()["n_val"]


# ---- BatchLoader ---------------------------------------------------------------------------

class CountingTensor:
    """Stands in for a tensor and records every index operation."""

    def __init__(self, t):
        self.t, self.calls, self.shape, self.device = t, [], t.shape, t.device

    def __getitem__(self, idx):
        self.calls.append(idx)
        return self.t[idx]


def test_batch_loader_counts_and_batch_at_a_time():
    x, y = torch.arange(10).float()[:, None], torch.arange(10)
    assert [len(b[0]) for b in BatchLoader((x, y), 4, shuffle=False, seed=0)] == [4, 4, 2]
    assert len(BatchLoader((x, y), 4, shuffle=False, seed=0, drop_last=True)) == 2
    counting = CountingTensor(x)
    batches = list(BatchLoader((counting, y), 4, shuffle=True, seed=0))
    assert len(counting.calls) == 3 and all(isinstance(i, torch.Tensor) for i in counting.calls)
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == list(range(10))


def test_batch_loader_shuffle_deterministic_and_new_per_epoch():
    x = torch.arange(50)

    def order(loader):
        return torch.cat([b[0] for b in loader]).tolist()

    a, b = BatchLoader((x, x), 8, True, seed=1), BatchLoader((x, x), 8, True, seed=1)
    first, second = order(a), order(a)
    assert first == order(b) and first != second and sorted(first) == list(range(50))
    assert order(b) == second                     # epoch 1 of both
    b.set_epoch(0)
    assert order(b) == first
    assert order(BatchLoader((x, x), 8, True, seed=2)) != first
    doubled = BatchLoader((x, x), 8, False, seed=0, transform=lambda t: t * 2)
    assert next(iter(doubled))[0].tolist() == [0, 2, 4, 6, 8, 10, 12, 14]


def test_shard_indices_equal_share_and_cover():
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    shards = [shard_indices(order, r, 4) for r in range(4)]
    assert {len(s) for s in shards} == {3}
    assert set(torch.cat(shards).tolist()) == set(range(10))
    assert shards[1].tolist() == order[[1, 5, 9]].tolist()
    assert shards[2].tolist() == order[[2, 6, 0]].tolist()     # wrapped around
    tiny = [shard_indices(torch.arange(2), r, 3) for r in range(3)]
    assert [t.tolist() for t in tiny] == [[0], [1], [0]]


def test_batch_loader_under_simulated_ddp(monkeypatch):
    x = torch.arange(103)
    seen = []
    for rank in range(4):
        monkeypatch.setattr(loading, "_world", lambda rank=rank: (rank, 4))
        loader = BatchLoader((x, x), 32, shuffle=True, seed=5)   # global 32 -> 8 per rank
        batches = list(loader)
        assert len(loader) == len(batches) == 4 and max(len(b[0]) for b in batches) == 8
        seen.append(torch.cat([b[0] for b in batches]))
    assert {len(s) for s in seen} == {26}
    assert set(torch.cat(seen).tolist()) == set(range(103))


# ---- images --------------------------------------------------------------------------------

def test_digits_shapes_and_train_stats():
    dm = image(augment=AugmentConfig(enabled=False))
    assert dm.spec.input_shape == (1, 8, 8) and dm.spec.num_classes == 10 and dm.spec.task == "classification"
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (64, 1, 8, 8) and y.dtype == torch.int64
    frame, labels = dm.raw_frame("train")
    assert list(frame.columns[:2]) == ["p0", "p1"] and frame.shape[1] == 64
    assert dm.prep["mean"][0] == pytest.approx(frame.to_numpy().mean() / 16)
    test_frame, _ = dm.raw_frame("test")
    assert np.array_equal(dm.transform_frame(test_frame), dm._tensors["test"][0].numpy())
    assert image(limit=300).fingerprint()["n_train"] < 300


def test_augmentation_changes_train_only():
    plain, aug = image(augment=AugmentConfig(enabled=False)), image(augment=AugmentConfig(max_rotation=20))
    (xp, yp), (xa, ya) = next(iter(plain.train_dataloader())), next(iter(aug.train_dataloader()))
    assert torch.equal(yp, ya) and not torch.allclose(xp, xa)
    for split in ("val_dataloader", "test_dataloader"):
        assert torch.equal(next(iter(getattr(plain, split)()))[0], next(iter(getattr(aug, split)()))[0])
    # zero shift/rotation is the identity warp, and the same seed gives the same augmentation
    ident = Augment(AugmentConfig(max_shift=0, max_rotation=0), [0.3], [0.4], seed=0)
    assert torch.allclose(ident(xp), xp, atol=1e-5)
    again = image(augment=AugmentConfig(max_rotation=20))
    assert torch.equal(next(iter(again.train_dataloader()))[0], xa)


def make_folder(root, sizes, classes=("cat", "dog", "emu"), per_class=6):
    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            h, w = sizes[(k * per_class + i) % len(sizes)]
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return str(root)


def test_image_folder(tmp_path):
    path = make_folder(tmp_path / "same", [(10, 12)])
    dm = image(source="image_folder", path=path, val_fraction=0.2, test_fraction=0.2)
    assert dm.spec.input_shape == (3, 10, 12) and dm.spec.class_names == ["cat", "dog", "emu"]
    frame, _ = dm.raw_frame("test")
    assert frame.shape[1] == 360 and np.array_equal(dm.transform_frame(frame), dm._tensors["test"][0].numpy())
    gray = image(source="image_folder", path=path, grayscale=True, val_fraction=0.2, test_fraction=0.2)
    assert gray.spec.input_shape == (1, 10, 12)
    mixed = make_folder(tmp_path / "mixed", [(10, 10), (16, 9)])
    with pytest.raises(DataError, match=r"data.image_size: images differ in size .*set data.image_size=<n>"):
        image(source="image_folder", path=mixed)
    resized = image(source="image_folder", path=mixed, image_size=12, val_fraction=0.2, test_fraction=0.2)
    assert resized.spec.input_shape == (3, 12, 12)
    tiny = make_folder(tmp_path / "tiny", [(5, 5)])
    with pytest.raises(DataError, match="at least 8x8"):
        image(source="image_folder", path=tiny, val_fraction=0.2, test_fraction=0.2)
    with pytest.raises(DataError, match="data.path: directory '.*missing' does not exist"):
        image(source="image_folder", path=str(tmp_path / "missing"))


@pytest.mark.parametrize("compress,nested", [(False, False), (True, True)])
def test_mnist_idx(tmp_path, compress, nested):
    root = tmp_path / "MNIST" / "raw" if nested else tmp_path
    write_mnist(root, compress=compress)
    dm = image(source="mnist", path=str(tmp_path), val_fraction=0.2)
    assert dm.spec.input_shape == (1, 12, 12) and dm.spec.num_classes == 10
    fp = dm.fingerprint()
    assert (fp["n_train"], fp["n_val"], fp["n_test"]) == (48, 12, 15)
    limited = image(source="mnist", path=str(tmp_path), val_fraction=0.25, limit=40).fingerprint()
    assert (limited["n_train"], limited["n_test"]) == (30, 15)


def test_mnist_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"data.path: MNIST file '.*train-images-idx3-ubyte' \(or .gz\) does not"):
        image(source="mnist", path=str(tmp_path))


def test_cifar10_batches(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    write_cifar10(root)
    dm = image(source="cifar10", path=str(tmp_path), val_fraction=0.2)
    assert dm.spec.input_shape == (3, 32, 32) and dm.spec.class_names[0] == "airplane"
    fp = dm.fingerprint()
    assert (fp["n_train"], fp["n_val"], fp["n_test"]) == (40, 10, 7)
    (root / "test_batch").unlink()
    with pytest.raises(DataError, match="CIFAR-10 file '.*test_batch' does not exist"):
        image(source="cifar10", path=str(tmp_path), val_fraction=0.2)


def test_spec_reexported():
    assert datamodules.DataSpec is DataSpec and issubclass(datamodules.DataError, Exception)


def test_on_device_placement_rules():
    """data.on_device: false keeps the host, true takes the training device, auto takes the host on a CPU run
    (on CUDA: the device if the tensors take under ON_DEVICE_SHARE of its free memory)."""
    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert loading.placement(False, gpu, 10) == cpu and loading.placement("false", gpu, 10) == cpu
    assert loading.placement(True, gpu, 10) == gpu and loading.placement("true", gpu, 10) == gpu
    assert loading.placement("auto", cpu, 10) == cpu
    dm = image(augment=AugmentConfig(enabled=False))
    assert dm.placement() == cpu and not dm._pin()     # no trainer attached: checks and plots read the host copy
