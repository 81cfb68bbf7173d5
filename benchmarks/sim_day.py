"""A hospital day at fleet scale, simulated under every policy (issue 21): ``python -m medray.sim`` with
the repository's configs as defaults.

    python benchmarks/sim_day.py                                   # the 24 h, 169-node day; ~1 min CPU
    python benchmarks/sim_day.py --png day.png --json day.json
    python benchmarks/sim_day.py --config benchmarks/sim/local_burst.yaml --policies static medray

docs/simulation.md explains the config, what is modelled and the latest results.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "platform"))

from medray.sim.__main__ import main  # noqa: E402

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--config" not in argv:
        argv = ["--config", str(HERE / "sim" / "day.yaml"), *argv]
    if "--calibration" not in argv and "--no-calibration" not in argv:
        argv += ["--calibration", str(HERE / "sim" / "local_burst.yaml")]
    sys.exit(main([a for a in argv if a != "--no-calibration"]))
