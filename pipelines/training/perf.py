"""Throughput and utilisation of a training run, as perf/ metrics per epoch (names.SAMPLES_PER_SECOND ...).

No MLflow here: the metrics go into Lightning's callback metrics, which the MLflow epoch logger and a Ray
worker's report pass on.
"""
from __future__ import annotations

from lightning.pytorch.callbacks import Callback


class Throughput(Callback):
    """Placeholder: samples/s, steps/s, FLOPs per sample, achieved TFLOP/s and MFU per epoch."""

    def __init__(self, cfg):
        self.cfg = cfg
