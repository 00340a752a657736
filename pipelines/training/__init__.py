"""Training: one model, one tracked run (`dlp train`, and every `dlp tune` trial).

fit.py (fit(): the one training function, in this process or in a Ray worker), driver.py (train(): checks, the
MLflow run, fit in-process or on Ray, outputs), checks.py (monitored metric, resume target), outputs.py (plots,
checkpoint and model from the best checkpoint), ray_driver.py + ray_worker.py (the Ray Train TorchTrainer and the
function its workers run: the only place `ray.train` is imported).
"""
