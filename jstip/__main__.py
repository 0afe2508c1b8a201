"""`python -m jstip ...`: the jstip command, e.g. as torchrun's worker entry point
(`torchrun --nproc-per-node 8 -m jstip train --store ...`)."""

from jstip.cli import app

app(prog_name="jstip")
