"""Workflow: `dlp pipeline experiment=X [tune=Y]`, prepare -> train (or tune) -> evaluate -> register -> promote.

plan.py (the command and conf/pipeline.yaml's step graph, checked before anything runs), runner.py (each step a
nested MLflow run, reused when its key matches a finished one), keys.py (what a step's key covers: code, config,
the data's content, its upstream steps), steps.py (what each step does, through training, sweeps and the
registry).
"""
