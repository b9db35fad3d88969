"""Where the benchmarks live and talk: the benchmarks folder, the checkout, the results
folder and the loopback address every system binds to.

One place for these so that a script, the systems it starts and the reports it writes
agree on them (the results land beside the scripts whatever the working directory).
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent.parent  # benchmarks/
ROOT = HERE.parent
RESULTS = HERE / "results"
HOST = "127.0.0.1"
