"""Tables larger than memory, as files: a CSV/Parquet source (one file, a folder of shards, an s3:// prefix) cut
into blocks (a Parquet row group, a CSV file) and read one bounded batch at a time.

Each row's split comes from a seeded hash of its file's path (relative to the source) and its row number in that
file: no global shuffle, no membership list, the same answer on every reader and in every process. The source's
fingerprint comes from the file listing (names, sizes, modification times) and the schema, never from a read.

Pure pyarrow/numpy: the in-process loader (stream_loader.py) and the Ray Data datasets of distributed runs
(pipelines/training/ray_data.py) both read through `Source.batches`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Tuple

import numpy as np
import pandas as pd
import pyarrow as pa

from . import preprocess
from .errors import DataError

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
READ_ROWS = 65536          # rows per batch read from a block (bounded memory whatever the block's size)
SUFFIXES = {"parquet": (".parquet", ".pq"), "csv": (".csv", ".csv.gz")}


def filesystem(uri: str):
    """(pyarrow filesystem, path in it) for a local path or an s3://bucket/prefix URI."""
    import pyarrow.fs as pafs

    if "://" in uri:
        try:
            return pafs.FileSystem.from_uri(uri)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"data.path: cannot open '{uri}': {_reason(e)}") from None
    from pathlib import Path

    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


@dataclass(frozen=True)
class Block:
    """A unit of reading: one Parquet row group (group >= 0) or one whole CSV file (group -1)."""
    file: str        # path in the filesystem
    rel: str         # path relative to the source root: what the split hash and the fingerprint use
    group: int
    first: int       # row number, within its file, of the block's first row
    rows: int = -1   # its rows (a row group's, from the footer); -1: not known without reading (a CSV file)


class ReadError(DataError):
    """A file of the source that cannot be read (`rel`: its path relative to the source)."""

    def __init__(self, message: str, rel: str):
        super().__init__(message)
        self.rel = rel


@dataclass
class Source:
    """The files of one table, their blocks and common schema; `skipped` lists (file, why) under on_error=skip."""
    uri: str
    fmt: str                               # parquet | csv
    files: List[Tuple[str, int, int]]      # (relative path, size, mtime ns)
    blocks: List[Block]
    schema: pa.Schema
    skipped: List[Tuple[str, str]] = field(default_factory=list)

    def digest(self) -> str:
        """sha256 of the listing and the schema: changes when a file is added, removed, rewritten or retyped."""
        text = json.dumps({"files": self.files, "schema": [(f.name, str(f.type)) for f in self.schema]})
        return hashlib.sha256(text.encode()).hexdigest()

    def drop(self, rel: str, why: str) -> None:
        """Leave file `rel` out (data.on_error=skip), noting why."""
        self.files = [f for f in self.files if f[0] != rel]
        self.blocks = [b for b in self.blocks if b.rel != rel]
        self.skipped.append((rel, why))
        if not self.files:
            raise DataError(f"data.path: no readable {self.fmt} file in '{self.uri}' ({len(self.skipped)} skipped)")

    def batches(self, block: Block, columns: List[str]) -> Iterator[Tuple[pa.RecordBatch, int]]:
        """(record batch of `columns`, row number of its first row in the file) for one block."""
        fs, _ = filesystem(self.uri)
        try:
            if self.fmt == "parquet":
                yield from _parquet_batches(fs, block, columns)
            else:
                yield from _csv_batches(fs, block, columns, self.schema)
        except (pa.ArrowException, OSError) as e:
            raise ReadError(f"data.path: cannot read '{block.rel}' of {self.uri}: {_reason(e)}; fix or remove "
                            "the file, or set data.on_error=skip", block.rel) from None


def _parquet_batches(fs, block: Block, columns: List[str]):
    import pyarrow.parquet as pq

    with fs.open_input_file(block.file) as f:
        row = block.first
        for batch in pq.ParquetFile(f).iter_batches(batch_size=READ_ROWS, row_groups=[block.group], columns=columns):
            yield batch, row
            row += batch.num_rows


def _csv_batches(fs, block: Block, columns: List[str], schema: pa.Schema):
    import pyarrow.csv as pacsv

    options = pacsv.ConvertOptions(column_types={f.name: f.type for f in schema}, include_columns=columns)
    with fs.open_input_stream(block.file) as f:
        reader = pacsv.open_csv(f, convert_options=options, read_options=pacsv.ReadOptions(block_size=1 << 24))
        row = 0
        for batch in reader:
            yield batch, row
            row += batch.num_rows


@dataclass
class BlockReader:
    """Block -> (x float32 model inputs, y targets) of one split: picklable, so Ray Data's tasks run it too."""
    source: Source
    columns: List[str]            # features then the target
    prep: dict
    classes: Optional[list]       # classification: the raw class values in code order; None: regression
    scale: Optional[list]         # regression: train [mean, std] of the target
    seed: int
    val_fraction: float
    test_fraction: float
    missing: str

    def read(self, block: Block, split: str) -> Iterator[tuple]:
        for frame in self.raw(block, split):
            yield self.arrays(frame)

    def raw(self, block: Block, split: str) -> Iterator[pd.DataFrame]:
        """The block's raw rows (self.columns) that belong to `split`, a read batch at a time."""
        code = SPLIT_CODES[split]
        for batch, first in self.source.batches(block, self.columns):
            keep = split_codes(block.rel, first, batch.num_rows, self.seed, self.val_fraction,
                               self.test_fraction) == code
            if not keep.any():
                continue
            frame = batch.filter(pa.array(keep)).to_pandas()   # only this split's rows leave Arrow
            if self.missing == "drop":
                frame = frame[~frame.isna().any(axis=1).to_numpy()]
            if len(frame):
                yield frame

    def arrays(self, frame: pd.DataFrame) -> tuple:
        x = preprocess.transform(frame[self.columns[:-1]], self.prep)
        y = frame[self.columns[-1]]
        if self.classes is None:
            target = ((y.to_numpy(dtype=np.float64) - self.scale[0]) / self.scale[1]).astype(np.float32)
        else:
            values = y.to_numpy(dtype=np.int64) if isinstance(self.classes[0], int) else y.to_numpy()
            target = pd.Categorical(values, categories=self.classes).codes.astype(np.int64)
        return x, target


# ---- listing -------------------------------------------------------------------------------

def discover(uri: str, fmt: str, on_error: str = "error") -> Source:
    """The source's files (sorted), their blocks and the schema they share; bad files raise or are skipped."""
    import pyarrow.fs as pafs

    fs, root = filesystem(uri)
    try:
        info = fs.get_file_info(root)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"data.path: cannot list '{uri}': {_reason(e)}") from None
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"data.path: '{uri}' does not exist")
    if info.type == pafs.FileType.File:
        found, base = [info], root.rsplit("/", 1)[0]
    else:
        listed = fs.get_file_info(pafs.FileSelector(root, recursive=True))
        found = sorted((i for i in listed if i.type == pafs.FileType.File and _is_data(i.path, root, fmt)),
                       key=lambda i: i.path)
        base = root
    if not found:
        raise DataError(f"data.path: '{uri}' holds no {' or '.join(SUFFIXES[fmt])} files; "
                        f"point data.path at a {fmt} file or a folder of them, or set data.source")
    source = Source(uri, fmt, [], [], pa.schema([]))
    for i in found:
        rel = i.path[len(base):].lstrip("/") or i.base_name
        try:
            schema, blocks = _file_blocks(fs, i.path, rel, fmt, source.schema if source.files else None)
        except DataError as e:
            if on_error != "skip":
                raise
            source.skipped.append((rel, str(e)))
            continue
        if not source.files:
            source.schema = schema
        source.files.append((rel, int(i.size or 0), int(i.mtime_ns or 0)))
        source.blocks.extend(blocks)
    if not source.files:
        raise DataError(f"data.path: no readable {fmt} file in '{uri}' ({len(source.skipped)} skipped)")
    return source


def _is_data(path: str, root: str, fmt: str) -> bool:
    """A data file of the format: hidden files and Spark/Hive markers (_SUCCESS, .crc) are not."""
    parts = path[len(root):].strip("/").split("/")
    return not any(p.startswith((".", "_")) for p in parts) and path.lower().endswith(SUFFIXES[fmt])


def _file_blocks(fs, path: str, rel: str, fmt: str, expected: Optional[pa.Schema]) -> tuple:
    """(schema, blocks) of one file, its schema checked against the first file's."""
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            with fs.open_input_file(path) as f:
                meta = pq.ParquetFile(f).metadata
                schema = meta.schema.to_arrow_schema()
                starts = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
            blocks = [Block(path, rel, g, int(starts[g]), int(starts[g + 1] - starts[g]))
                      for g in range(meta.num_row_groups)]
        else:
            schema, blocks = _csv_schema(fs, path), [Block(path, rel, -1, 0)]
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"data.path: cannot read '{rel}' as {fmt.capitalize()}: {_reason(e)}; fix or remove it, "
                        "or set data.on_error=skip") from None
    if expected is not None:
        _check_schema(rel, schema, expected, fmt)
    return schema, blocks


def _csv_schema(fs, path: str) -> pa.Schema:
    """The CSV's columns and types from its first block; integers widen to float64 and all-empty columns to
    strings, so a later block with a decimal point or text still converts."""
    import pyarrow.csv as pacsv

    with fs.open_input_stream(path) as f:
        schema = pacsv.open_csv(f).schema
    wide = {pa.types.is_integer: pa.float64(), pa.types.is_null: pa.string()}
    return pa.schema([pa.field(f.name, next((t for test, t in wide.items() if test(f.type)), f.type))
                      for f in schema])


def _check_schema(rel: str, schema: pa.Schema, expected: pa.Schema, fmt: str) -> None:
    have = {f.name: f.type for f in schema}
    want = {f.name: f.type for f in expected}
    if fmt == "csv":   # types come from the first file
        have = {n: want.get(n) for n in have}
    if have == want:
        return
    missing, extra = [n for n in want if n not in have], [n for n in have if n not in want]
    retyped = [f"{n} ({have[n]}, not {want[n]})" for n in want if n in have and have[n] != want[n]]
    what = "; ".join(part for part in (f"lacks {', '.join(missing)}" if missing else "",
                                       f"adds {', '.join(extra)}" if extra else "",
                                       f"retypes {', '.join(retyped)}" if retyped else "") if part)
    raise DataError(f"data.path: shard '{rel}' has another schema than the first file ({what}); fix or remove it, "
                    "or set data.on_error=skip")


# ---- split membership ----------------------------------------------------------------------

_M1, _M2, _GOLD = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a uint64 -> uint64 bijection whose outputs look uniform."""
    with np.errstate(over="ignore"):
        z = x + _GOLD
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def file_key(rel: str, seed: int) -> np.uint64:
    digest = hashlib.sha256(f"{seed}\x1f{rel}".encode()).digest()
    return np.frombuffer(digest[:8], dtype=np.uint64)[0]


def split_codes(rel: str, first: int, n: int, seed: int, val_fraction: float, test_fraction: float) -> np.ndarray:
    """0 (train), 1 (val) or 2 (test) for rows first..first+n-1 of file `rel`: a seeded hash of (file, row)."""
    rows = np.arange(first, first + n, dtype=np.uint64)
    u = (_mix(rows ^ file_key(rel, seed)) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    out = np.zeros(n, dtype=np.int8)
    out[u < test_fraction + val_fraction] = 1
    out[u < test_fraction] = 2
    return out


def _reason(e: Exception) -> str:
    return str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
