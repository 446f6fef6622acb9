"""`python -m streaming.cli` is the `riskstream` command (make bench runs it so, with a baseline
checkout's code first on PYTHONPATH)."""

import sys

from streaming.cli import main

sys.exit(main())
