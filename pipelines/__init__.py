"""dlpipe's orchestration: the `dlp` command line and everything between it and the models and data.

Layers, top to bottom (each imports only the ones below it; tests/unit/test_layout.py holds it so):
cli/ -> workflow/ -> sweeps/ -> training/ -> registry/ -> cluster/ -> tracking/ -> config/ -> errors, signals,
and below them all the top-level models/ and datamodules/ packages. Each folder's __init__ says what it owns.
"""
