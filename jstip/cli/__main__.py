"""`python -m jstip.cli ...`: the jstip command (as `python -m jstip`)."""

import sys

from jstip.cli import app

sys.exit(app(prog_name="jstip"))
