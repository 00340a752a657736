"""What a command prints besides its own summary: libraries kept quiet, and where to browse a run."""
from __future__ import annotations

import logging
import os
import warnings

UI_HOST, UI_PORT = "127.0.0.1", 5000      # `dlp ui`'s defaults
LIBRARY_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning", "mlflow", "alembic")


def quiet_libraries(*more_loggers: str) -> None:
    """Lightning's banner lines ("GPU available: False ...") and MLflow's store/validation chatter would bury the
    one line per epoch and the summary; real warnings and errors still show. The driver calls it, and so does
    every Ray Train worker (`more_loggers`: Ray's own per-report INFO loggers there)."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow  # noqa: F401  (configures its loggers on import; override them after)

    for name in (*LIBRARY_LOGGERS, *more_loggers):
        logging.getLogger(name).setLevel(logging.WARNING)
    # it logs every database error with its traceback before raising it: `dlp` prints the one line
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*deterministic.*")


def browse_hint(experiment_id: str, run_id: str) -> str:
    """The summary's last line: how to open this run in the MLflow UI."""
    return f"  browse:   dlp ui   then open http://{UI_HOST}:{UI_PORT}/#/experiments/{experiment_id}/runs/{run_id}"
