"""`python -m pipelines.cli ...`: the same as `dlp ...` (Ray jobs run dlp this way)."""
import sys

from pipelines.cli import main

sys.exit(main())
