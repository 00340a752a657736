"""The model a run logs: its network as a torch.export program plus the preprocessing, as an MLflow pyfunc
model that takes raw rows (pyfunc_model.py is the code MLflow loads it with)."""
from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Optional

from pipelines.tracking import names


def as_model_input(frame, prep: dict):
    """Raw rows typed as a logged model's signature takes them: integer and float32 columns as doubles (the
    signature would refuse the doubles a CSV handed to `dlp predict` holds; doubles accept both), timestamps as ISO
    strings (that CSV holds strings, not datetimes)."""
    frame = frame.astype({c: "float64" for c in frame.select_dtypes(["integer", "float32"]).columns})
    if prep.get("kind") == "timeseries":
        frame[prep["time"]] = frame[prep["time"]].astype(str)
    return frame


def input_example(dm):
    """A few raw test rows the logged model accepts (for time series: the last lookback steps of each series)."""
    prep = dm.prep
    # a streamed table's test split may not fit in memory: five rows are read, not the split
    frame, _ = dm.raw_frame("test", limit=None if prep["kind"] == "timeseries" else 5)
    if prep["kind"] == "timeseries":
        group = prep.get("group")
        frame = frame.groupby(group, sort=True).tail(prep["lookback"]) if group else frame.tail(prep["lookback"])
        frame = frame.reset_index(drop=True)
    else:
        frame = frame.head(5)
    return as_model_input(frame, prep)


def log_model(net, prep: dict, raw_example, registered_model_name: Optional[str] = None):
    """Log `net` + preprocessing as a pyfunc model (raw rows in) under the active run's `model`.

    The network is saved as a torch.export program with a dynamic batch dimension and without its example
    inputs (torch would pickle them), so the archive holds JSON and raw tensor bytes only. The digests of the
    logged files are recorded (model_trust.record) for model_trust.load_verified to check.
    """
    import mlflow
    import torch
    from mlflow.models import infer_signature

    from datamodules import preprocess, preprocess_text
    from pipelines.tracking import model_trust, pyfunc_model

    net = net.eval().cpu().float()
    x = torch.from_numpy(preprocess.transform(raw_example, prep))
    if x.shape[0] < 2:  # torch.export specialises size-1 dimensions
        x = torch.cat([x, x])
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        # nn.LSTM/GRU re-list their weights in _flat_weights while tracing; harmless, and not ours to fix
        warnings.filterwarnings("ignore", message=".*were assigned during export.*")
        program = torch.export.export(net, (x,), dynamic_shapes=({0: batch},))
    with tempfile.TemporaryDirectory() as tmp:
        net_path, prep_path = Path(tmp) / "net.pt2", Path(tmp) / "prep.json"
        program.example_inputs = None   # else a pickle in the archive, which torch.export.load unpickles
        torch.export.save(program, net_path)
        pickled = model_trust.find_pickle(net_path.name, net_path.read_bytes())
        if pickled:  # a torch that pickles weights would make every model refused on load: fail here, not there
            raise RuntimeError(f"torch.export.save wrote pickle data into the model's archive ({pickled})")
        prep_path.write_text(json.dumps(prep))
        output = pyfunc_model.DlpModel().bind(program.module(), prep).predict(None, raw_example)
        with warnings.catch_warnings():
            # integer *outputs* (a forecast's step column) are fine; integer inputs were made doubles upstream
            warnings.filterwarnings("ignore", message=".*Inferred schema contains integer column.*")
            signature = infer_signature(raw_example, output)
        info = mlflow.pyfunc.log_model(
            name=names.LOGGED_MODEL,
            python_model=pyfunc_model.__file__,
            artifacts={"net": str(net_path), "prep": str(prep_path)},
            code_paths=[preprocess.__file__, preprocess_text.__file__],
            signature=signature,
            input_example=raw_example,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy", "pandas", "mlflow"],
            registered_model_name=registered_model_name,
        )
    model_trust.record(info)
    return info
