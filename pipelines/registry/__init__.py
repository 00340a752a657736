"""Registry: the MLflow model registry, the dlpipe way — aliases only, every move backed by evidence.

versions.py (`dlp register`, `dlp models`: versions with their run's evidence as tags), evaluation.py (the frozen
test split rebuilt from a run's config, scoring raw rows through the logged model: `dlp evaluate`),
promotion.py (`dlp promote`, `dlp rollback`: challenger -> champion only if better), lock.py (the promotion lock).
"""
