"""Sweeps: `dlp tune experiment=X tune=Y`, a Ray Tune search over any config key, one training run per trial.

spec.py (the command as a checked Sweep: space, algorithm, budget), search.py (TPE without repeats, the
scheduler), tuner.py (the Tuner, the trial function, resume), trials.py (each trial's final status on its child
run), table.py (the live table of trials), report.py (the sweep run's outputs, the challenger, the summary).
The only place `ray.tune` is imported.
"""
