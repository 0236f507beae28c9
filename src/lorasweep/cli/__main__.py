"""`python -m lorasweep.cli ...` (torchrun and the SLURM launcher start workers this way)."""

import sys

from .main import main

sys.exit(main())
