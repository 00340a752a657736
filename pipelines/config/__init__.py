"""Config: compose conf/ with Hydra and validate it against typed schemas, before any compute.

compose.py (compose, validate, flatten), schema.py (root and fixed groups, CHOICES), model_schema.py,
data_schema.py, sweep_schema.py (conf/tune/). Every `dlp` command starts here; `dlp config show` prints the result.
"""
