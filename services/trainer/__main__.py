"""Entry point: ``python -m services.trainer train --config ...`` (see ``cli.py``)."""

import sys

from services.trainer.cli import main

sys.exit(main())
