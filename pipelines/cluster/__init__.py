"""Cluster: the Ray cluster a command runs on and the jobs sent to one.

local.py (RayCluster: join $RAY_ADDRESS or start a local cluster, owned and stopped by the command; used by
`dlp train trainer.num_workers>=1` and `dlp tune`), jobs.py (`dlp submit`, `dlp jobs`, `dlp logs`, `dlp stop`
through the Ray Jobs API).
"""
