"""Tracking: everything dlpipe writes into MLflow and how it reads it back.

names.py (metric keys, tags, artifact paths), store.py (which store, the experiment, the code version),
runs.py (run lifecycle, batched metrics and params), callbacks.py (per-epoch metrics from rank 0),
model.py + pyfunc_model.py (the logged model: raw rows in), plots.py, console.py (quiet libraries, where to
browse). Used by every command that runs something: train, tune, pipeline, evaluate, promote.
"""
