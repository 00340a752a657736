"""`dlp predict`'s checks of what goes in and what comes out: a file pandas cannot read, ±inf in an input row or a
NaN probability in an output row is one line naming the file, column and rows, never a traceback or a CSV of NaNs.
"""
from __future__ import annotations

from pathlib import Path

from pipelines.errors import UserError, first_line

SHOWN_ROWS = 5   # row numbers a message lists before "..."


def read_input(src: Path):
    """The rows of a CSV or Parquet file, as a DataFrame; UserError naming the file when it is none."""
    import pandas as pd

    if src.is_dir():
        raise UserError(f"predict: input '{src}' is a directory, not a file; name a CSV or Parquet file")
    if not src.is_file():
        what = "is not a regular file" if src.exists() else "does not exist"
        raise UserError(f"predict: input file '{src}' {what}")
    parquet = src.suffix.lower() in (".parquet", ".pq")
    kind = "Parquet" if parquet else "CSV"
    try:
        frame = pd.read_parquet(src) if parquet else pd.read_csv(src)
    # ParserError (a ragged file), EmptyDataError, UnicodeDecodeError (binary junk) and pyarrow's errors are all
    # ValueErrors; OSError: unreadable
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError, OSError) as e:
        raise UserError(f"predict: cannot read '{src}' as {kind}: {first_line(e)}; "
                        f"check that it is a {kind} file of the model's input columns") from None
    if frame.empty:
        raise UserError(f"predict: '{src}' has no rows to predict")
    return frame


def _rows(positions) -> str:
    """1-based row numbers, the first SHOWN_ROWS of them."""
    shown = ", ".join(str(int(i) + 1) for i in positions[:SHOWN_ROWS])
    return shown + (f", ... ({len(positions)} in all)" if len(positions) > SHOWN_ROWS else "")


def _nonfinite(frame, columns, with_nan: bool) -> dict:
    """{column: positions of its ±inf (and, with_nan, NaN) values} over the numeric `columns` that hold any."""
    import numpy as np
    from pandas.api import types as ptypes

    out = {}
    for c in columns:
        s = frame[c]
        if not ptypes.is_numeric_dtype(s.dtype) or ptypes.is_bool_dtype(s.dtype):
            continue
        v = s.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.flatnonzero(~np.isfinite(v) if with_nan else np.isinf(v))
        if len(bad):
            out[c] = bad
    return out


def check_inputs(frame, columns, src: Path) -> None:
    """UserError for ±inf in a numeric input column (NaN is a missing value: the model imputes or refuses it)."""
    bad = _nonfinite(frame, [c for c in columns if c in frame.columns], with_nan=False)
    if bad:
        c, rows = next(iter(bad.items()))
        more = f" (and column(s) {', '.join(repr(str(k)) for k in list(bad)[1:])})" if len(bad) > 1 else ""
        raise UserError(f"predict: column '{c}' of {src} holds non-finite values (inf/-inf) in row(s) {_rows(rows)}"
                        f"{more}; replace them with numbers, or leave them empty if the model imputes")


def check_outputs(preds, src: Path, out: Path) -> None:
    """UserError, and nothing written, when a prediction is NaN or inf: inputs far outside what the model saw."""
    bad = _nonfinite(preds, list(preds.columns), with_nan=True)
    if bad:
        import numpy as np

        rows = np.unique(np.concatenate(list(bad.values())))
        raise UserError(f"predict: prediction row(s) {_rows(rows)} for {src} are NaN or inf (column "
                        f"'{next(iter(bad))}'); nothing was written to {out}; their input rows hold values far "
                        "outside the training data's range: check them")
