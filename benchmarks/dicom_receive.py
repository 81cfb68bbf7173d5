"""DICOM receive under load: concurrent associations C-STORE CT studies into the gateway (issue 19's goal).

On the local cluster of cluster.yaml: the diagnosis service (``serve_load.medray_args``: a seeded
NoduleNet, fixed replicas), a private Orthanc (medray.dicom.orthanc) and the DICOM gateway in front
of the service (workloads.diagnosis.gateway). ``--associations`` senders each C-STORE their own
synthetic CT series (``--slices`` slices, ``medray.data.cohort``) at once, in one association each.
Reported: instances refused or lost (every instance must be answered 0x0000 and reach the service),
series diagnosed, SRs found in Orthanc by QIDO-RS, studies per second from the first instance sent to
the last SR stored, and, per series, the time from its completion (quiet period over) to its SR
stored (p50 and max).

    python benchmarks/dicom_receive.py                         # 10 x 20 slices, ~2 minutes on 2 cores
    python benchmarks/dicom_receive.py --associations 4 --quiet 1

Needs Orthanc (apt-get install -y orthanc orthanc-dicomweb). Loads only 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `workloads` when run as a script from anywhere
sys.path.insert(0, str(REPO / "benchmarks"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--associations", type=int, default=10, help="concurrent senders, one series each")
    p.add_argument("--slices", type=int, default=20)
    p.add_argument("--rows", type=int, default=64, help="pixels per side of a slice")
    p.add_argument("--quiet", type=float, default=2.0, help="the gateway's quiet period (s)")
    p.add_argument("--replicas", type=int, default=1, help="routine ingress replicas")
    p.add_argument("--workers", type=int, default=4, help="series the gateway diagnoses at once")
    p.add_argument("--timeout", type=float, default=300.0)
    a = p.parse_args(argv)

    import pydicom
    import ray
    from dicomweb_client.api import DICOMwebClient
    from serve_load import make_fixture, medray_args

    from medray.cluster.local import local_cluster
    from medray.data.cohort import generate_cohort
    from medray.dicom.net import store_instances
    from medray.dicom.orthanc import orthanc_missing, start_orthanc
    from workloads.diagnosis.gateway import start_gateway
    from workloads.diagnosis.local import run_local, stop_local

    if missing := orthanc_missing():
        print(missing, file=sys.stderr)
        return 2
    os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
    with tempfile.TemporaryDirectory(prefix="dicom-receive-") as tmp:
        root = Path(tmp)
        registry, _, _, _ = make_fixture(root, "instance")
        setup = medray_args(root, registry, a.replicas)
        (root / "gateway.token").write_text(setup["token"])
        generate_cohort(root / "load", patients=a.associations, seed=1, rows=a.rows, slices=a.slices)
        studies = [[pydicom.dcmread(f) for f in sorted(d.glob("*.dcm"))]
                   for d in sorted((root / "load" / "dicom").glob("study_*/series_*"))]
        pacs = start_orthanc(root / "orthanc")
        try:
            with local_cluster(REPO / "cluster.yaml", connect=False) as cluster:
                ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
                url = run_local(setup["args"])
                gateway = start_gateway({
                    "routes": {"MEDRAY": "routine"}, "service_url": url, "token_file": str(root / "gateway.token"),
                    "host": "127.0.0.1", "port": 0, "quiet_s": a.quiet, "workers": a.workers,
                    "archive": {"host": "127.0.0.1", "port": pacs.dicom_port, "aet": pacs.aet}})
                host, port = ray.get(gateway.address.remote())
                print(f"{len(studies)} series of {a.slices} slices -> gateway {host}:{port}", flush=True)
                start = time.time()
                with ThreadPoolExecutor(len(studies)) as pool:
                    statuses = list(pool.map(lambda s: store_instances(s, host=host, port=port, called_aet="MEDRAY"),
                                             studies))
                sent_s = time.time() - start
                deadline = time.monotonic() + a.timeout
                while len(outcomes := ray.get(gateway.outcomes.remote())) < len(studies) and time.monotonic() < deadline:
                    time.sleep(0.2)
                end = time.time()
                web = DICOMwebClient(pacs.dicomweb_url)
                srs = web.search_for_instances(search_filters={"Modality": "SR"})
                ray.get(gateway.stop.remote())
                stop_local()
        finally:
            pacs.stop()
    sent = sum(len(s) for s in studies)
    refused = Counter(f"0x{status:04X}" for s in statuses for status in s if status != 0)
    received = sum(o["instances"] for o in outcomes)
    # An instance answered with a failure (e.g. the sender's DIMSE timeout, 0x0110 here) may still
    # have been kept: lost = answered success and never handed on.
    lost = max(0, sent - sum(refused.values()) - received)
    ok = [o for o in outcomes if o.get("status") == 200 and o.get("sr_status") == 0]
    after = sorted(o["done_at"] - o["completed_at"] for o in ok)
    print(f"instances sent {sent}, answered other than success {dict(refused) or 0}, received {received}, "
          f"lost {lost}; sending took {sent_s:.1f} s")
    print(f"series diagnosed and SR stored {len(ok)}/{len(studies)}, SRs found by QIDO-RS {len(srs)}")
    print(f"studies/s (first instance sent -> last SR stored, quiet period {a.quiet} s included): "
          f"{len(ok) / (end - start):.2f}")
    if after:
        print(f"series completed -> SR stored: p50 {statistics.median(after):.2f} s, max {after[-1]:.2f} s")
    return 0 if len(ok) == len(studies) == len(srs) and not refused and not lost else 1


if __name__ == "__main__":
    raise SystemExit(main())
