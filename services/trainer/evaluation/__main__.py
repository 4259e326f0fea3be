"""``python -m services.trainer.evaluation``: evaluate without training (see ``cli.py``)."""

import sys

from services.trainer.evaluation.cli import main

sys.exit(main())
