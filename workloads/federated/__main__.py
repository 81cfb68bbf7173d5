"""Federated training of NoduleNet across sites, with SecAgg+ and each site's differential privacy.

    python -m workloads.federated --site partner-a=/data/a/prep --site partner-b=/data/b/prep \
        --rounds 5 --registry DIR

Each ROOT is the site's storage as its own nodes see it (ROOT/volumes/*.parquet, ROOT/emr/diagnoses.parquet
and the operator's ROOT/federated-policy.json); the coordinator never opens it. Works as a
``ray job submit`` entry point (it connects to the job's cluster) and on ``medray up --local``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from medray.errors import MedrayError
from workloads.federated.config import STRATEGIES, FederatedConfig, parse_site
from workloads.federated.local import LocalTraining


def build_parser() -> argparse.ArgumentParser:
    d, local = FederatedConfig(sites=(parse_site("a=/"), parse_site("b=/"))), LocalTraining()
    p = argparse.ArgumentParser(prog="python -m workloads.federated", description=__doc__.split("\n\n")[0])
    p.add_argument("--site", action="append", required=True, metavar="SITE=ROOT",
                   help="a site and its storage root (repeat: at least 2)")
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--strategy", choices=STRATEGIES, default=d.strategy)
    p.add_argument("--proximal-mu", type=float, default=d.proximal_mu, help="FedProx's mu")
    p.add_argument("--local-epochs", type=int, default=local.epochs, help="epochs each site trains per round")
    p.add_argument("--batch-size", type=int, default=local.batch_size)
    p.add_argument("--lr", type=float, default=local.lr)
    p.add_argument("--width", type=int, default=local.width, help="NoduleNet's stem channels (multiple of 8)")
    p.add_argument("--seed", type=int, default=local.seed)
    p.add_argument("--val-fraction", type=float, default=local.val_fraction,
                   help="share of each site's patients held out for the site's evaluation")
    p.add_argument("--reconstruction-threshold", type=float, default=d.reconstruction_threshold,
                   help="SecAgg+: share of a site's key shares needed to recover it if it drops")
    p.add_argument("--plain-aggregation", action="store_true",
                   help="Flower's plain FedAvg exchange instead of SecAgg+, to measure SecAgg+'s cost (sites "
                        "whose policy requires secure aggregation refuse)")
    p.add_argument("--cpus-per-site", type=float, default=d.cpus_per_site)
    p.add_argument("--registry", help="model registry folder; the model is not registered without it")
    p.add_argument("--name", default=d.name, help="registry model name (default %(default)s)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from workloads.federated.run import federate

    args = build_parser().parse_args(argv)
    try:
        config = FederatedConfig(
            sites=tuple(parse_site(s) for s in args.site), rounds=args.rounds, strategy=args.strategy,
            proximal_mu=args.proximal_mu, reconstruction_threshold=args.reconstruction_threshold,
            cpus_per_site=args.cpus_per_site, registry=args.registry, name=args.name,
            secure_aggregation=not args.plain_aggregation,
            local=LocalTraining(epochs=args.local_epochs, batch_size=args.batch_size, lr=args.lr,
                                width=args.width, seed=args.seed, val_fraction=args.val_fraction))
        result = federate(config)
    except MedrayError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result.table())
    print(f"{len(result.rounds)} rounds in {result.seconds:.0f} s; secure aggregation stages: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(result.stage_seconds.items())))
    print(f"registered: {result.ref} -> {result.registry_path}" if result.ref else "not registered (no --registry)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
