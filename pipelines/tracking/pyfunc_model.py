"""The MLflow pyfunc model dlpipe logs: raw rows in, predictions out (MLflow "models from code").

This file is copied into every logged model and executed on load, so it imports only torch,
numpy, pandas and mlflow; the preprocessing it applies ships beside it as `preprocess.py` and
`preprocess_text.py` (from datamodules/), and the network as a torch.export program (`net.pt2`). A model
therefore loads with `mlflow.pyfunc.load_model` or `mlflow models serve` without dlpipe's code — and loading runs
code: this file, the files beside it, and any pickle a `net.pt2` declares. `dlp` loads a model only through
model_trust.load_verified, which first checks its files against the digests recorded when it was logged.
"""
import json

import mlflow
import numpy as np
import pandas as pd
import torch

try:  # inside a logged model, code_paths puts preprocess.py on sys.path
    from preprocess import forecast_frame, transform
except ImportError:  # pragma: no cover - running from the repository
    from datamodules.preprocess import forecast_frame, transform


class DlpModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        with open(context.artifacts["prep"]) as f:
            prep = json.load(f)
        self.bind(torch.export.load(context.artifacts["net"]).module(), prep)

    def bind(self, net, prep: dict) -> "DlpModel":
        """Attach the network and its preprocessing (also used at logging time, for the signature)."""
        self.net, self.prep = net, prep
        self.task = prep["task"]
        self.classes = prep.get("class_names", [])
        return self

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """Tabular/image rows -> one prediction per row; texts -> label + probabilities per text;
        a time-series history (one or more series) -> `horizon` future rows per series with timestamps."""
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        x = torch.from_numpy(np.ascontiguousarray(transform(frame, self.prep)))  # float32, or int64 token ids
        with torch.no_grad():
            out = self.net(x)
        if self.task == "regression":
            values = out.numpy().astype(np.float64)
            target = self.prep.get("target_scale")
            if target:  # the net predicts the standardised target
                values = values * target[1] + target[0]
            if self.prep["kind"] == "timeseries":
                return forecast_frame(frame, self.prep, values)
            return pd.DataFrame({"prediction": values.reshape(-1)})
        probs = torch.softmax(out.float(), dim=-1).numpy()
        result = pd.DataFrame({"prediction": np.asarray(self.classes, dtype=object)[probs.argmax(1)]})
        for i, name in enumerate(self.classes):
            result[f"prob_{name}"] = probs[:, i]
        return result


mlflow.models.set_model(DlpModel())
