"""``python -m medray.sim --config DAY.yaml``: simulate a day under every policy and print them side by side.

``benchmarks/sim_day.py`` is this command with the repository's trace configs as defaults.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from medray.errors import MedrayError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m medray.sim", description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, required=True, help="trace config (e.g. benchmarks/sim/day.yaml)")
    p.add_argument("--policies", nargs="+", default=None,
                   help="policies to run (default: all: static first-fit medray medray-elastic)")
    p.add_argument("--seed", type=int, default=None, help="override the config's seed")
    p.add_argument("--baseline", default="static", help="policy the ratios are taken against")
    p.add_argument("--markdown", action="store_true", help="print the table as a Markdown pipe table")
    p.add_argument("--png", type=Path, default=None, help="write the figure here")
    p.add_argument("--json", type=Path, default=None, help="write every policy's figures here")
    p.add_argument("--calibration", type=Path, default=None,
                   help="also simulate this burst trace (benchmarks/sim/local_burst.yaml) and compare it "
                        "with the recorded benchmark run")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; 0 on success, 2 on bad input (the message says what to fix)."""
    args = _parser().parse_args(argv)
    from medray.sim import calibrate, load_config, plot, policy_named, simulate, summarize, table
    from medray.sim.policies import POLICIES

    try:
        config = load_config(args.config)
        policies = [policy_named(n) for n in args.policies] if args.policies else list(POLICIES)
        summaries = []
        for policy in policies:
            summary = summarize(simulate(config, policy, seed=args.seed))
            print(f"{policy.name}: simulated in {summary.cpu_s:.1f} s CPU ({summary.wall_s:.1f} s wall)",
                  file=sys.stderr)
            summaries.append(summary)
        span = f"{config.duration_s / 3600:g} h" if config.duration_s >= 3600 else f"{config.duration_s:g} s"
        print(f"{args.config}: seed {args.seed if args.seed is not None else config.seed}, {span}")
        print(table(summaries, baseline=args.baseline, markdown=args.markdown))
        comparison = calibrate(args.calibration) if args.calibration else None
        if comparison is not None:
            print()
            print(f"calibration: {args.calibration} (medray's policy) against the recorded burst benchmark")
            print("\n".join(comparison.lines()))
        if args.png:
            burst = next((lane.bursts[0] for lane in config.lanes if lane.bursts), None)
            unit = 3600.0 if config.bin_s >= 3600 else 1.0
            span = (burst.start_s / unit, (burst.start_s + burst.duration_s) / unit) if burst else None
            plot(summaries, args.png, span=span, title=f"{args.config.name}: seed {config.seed}")
            print(f"figure: {args.png}")
        if args.json:
            doc = {"config": str(args.config), "seed": args.seed if args.seed is not None else config.seed,
                   "policies": [s.to_dict() for s in summaries]}
            if comparison is not None:
                doc["calibration"] = {"simulated": comparison.simulated.__dict__,
                                      "recorded": comparison.recorded.__dict__, "ok": comparison.ok}
            args.json.write_text(json.dumps(doc, indent=1, default=float))
            print(f"figures: {args.json}")
    except MedrayError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
