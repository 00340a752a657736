"""A run's train/val/test splits as MLflow dataset inputs: the UI's Dataset column and dataset pages.

Metadata only (MLflow's MetaDataset): where the data came from (a CSV/Parquet file, folder or s3:// prefix as
MLflow's local or S3 source; otherwise the dlp source string such as "sklearn:digits", as the fingerprint names
it), each split's digest (the first 32 hex digits of its sha256) and schema (the network's input tensor: float32
of the data's input shape, int64 token ids for text), and its row count as a tag. Nothing is copied: a dataset of any size costs a few rows in the store.
"""
from __future__ import annotations

from typing import Dict

CONTEXTS: Dict[str, str] = {"train": "training", "val": "validation", "test": "test"}


def log_datasets(dm, name: str, fp: Dict) -> None:
    """Log `dm`'s splits (its fingerprint `fp`) to the active run as inputs named <name>-<split>."""
    import mlflow
    from mlflow.data.meta_dataset import MetaDataset

    digests = dm.split_digests()
    source = _source(str(fp.get("source") or "unknown"))
    schema = _schema(dm)
    for split, context in CONTEXTS.items():
        dataset = MetaDataset(source, name=f"{name}-{split}", digest=digests[split][:32], schema=schema)
        mlflow.log_input(dataset, context=context, tags={"rows": str(fp[f"n_{split}"])})


def _source(dlp_source: str):
    """A file or s3:// table ("csv:<path>", "parquet:s3://...") as MLflow's own local-file or S3 source, so the UI
    shows where it lives; anything else (sklearn:digits, mnist:<dir>, ...) as a code source tagged with it."""
    import warnings

    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    kind, _, where = dlp_source.partition(":")
    if kind in ("csv", "parquet") and where:
        with warnings.catch_warnings():   # a local path "can be interpreted in multiple ways" (two local kinds)
            warnings.simplefilter("ignore")
            return resolve_dataset_source(where)
    return CodeDatasetSource(tags={"dlp.source": dlp_source})


def _schema(dm):
    import numpy as np
    from mlflow.types import Schema, TensorSpec

    spec = dm.spec
    dtype = np.dtype("int64") if spec.vocab_size else np.dtype("float32")
    return Schema([TensorSpec(dtype, (-1, *(int(d) for d in spec.input_shape)), "x")])
