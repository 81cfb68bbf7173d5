"""What runs inside the lanes' ingress replicas: the model catalog and the diagnosis engine.

* :class:`ModelCatalog` (one replica, in the routine application) holds which registry version
  serves each expert (``"CT/CHEST" -> "nodule:3"``). Admins change it at run time; every engine,
  both lanes', polls it, so a new version takes over everywhere within about a second, without a
  restart. :func:`catalog_handle` reaches it from the emergency application.
* :class:`Engine` diagnoses in one replica: it reads and normalises the DICOM, runs the model on
  dynamic batches (``@serve.batch``) in a worker thread, and multiplexes models by reference
  (``@serve.multiplexed``, LRU of ``MODELS_PER_REPLICA``). Only pseudonyms leave it. Each lane's
  ingress replicas run one (no extra hop on the hot path).
"""

from __future__ import annotations

import asyncio
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from ray import serve

from medray.cluster.nvml import limit_gpu_memory
from medray.errors import DicomError, MedrayError
from medray.logs import get_logger
from medray.models.findings import finding_spec
from medray.models.registry import list_models, resolve
from medray.privacy.pseudonym import load_key, pseudo_uid, pseudonym
from medray.scheduling.load import current_node_type
from workloads.diagnosis.config import DiagnosisArgs
from workloads.diagnosis.pipeline import LoadedModel, load_model, predict, prepare

__all__ = ["MODELS_PER_REPLICA", "SYNC_PERIOD_S", "CATALOG_WAIT_S", "ModelCatalog", "Engine", "catalog_handle",
           "in_time",
           "simulated_batch_s"]

MODELS_PER_REPLICA = 3
SYNC_PERIOD_S = 0.5
CATALOG_WAIT_S = 120.0  # how long an emergency replica waits for the routine application's catalog
_SEEN_TTL_S = 10.0

log = get_logger("diagnosis")


class ModelCatalog:
    """The routing table expert -> model version, and which replicas hold which models."""

    def __init__(self, registry: str, experts: dict[str, str]) -> None:
        self._registry = registry
        # `name:latest` is pinned to a version here, so that what serves is always explicit.
        self._table = {key: resolve(registry, ref).manifest.ref for key, ref in experts.items()}
        self._version = 1
        self._seen: dict[str, tuple[str, list[str], float]] = {}

    def snapshot(self) -> tuple[int, dict[str, str]]:
        """(version, table); the version grows with every change."""
        return self._version, dict(self._table)

    def sync(self, replica: str, lane: str, resident: list[str]) -> tuple[int, dict[str, str]]:
        """A lane replica's heartbeat: record the models it holds, answer with the table."""
        self._seen[replica] = (lane, resident, time.monotonic())
        return self.snapshot()

    def activate(self, expert: str, ref: str) -> dict[str, Any]:
        """Serve ``ref`` (verified in the registry) for ``expert`` from now on.

        Returns ``{"catalog_version", "experts"}``, or ``{"error": message}`` when refused.
        """
        if expert not in self._table:
            return {"error": f"no expert {expert!r}; experts are {sorted(self._table)}"}
        try:
            self._table[expert] = resolve(self._registry, ref).manifest.ref
        except MedrayError as e:
            return {"error": str(e)}
        self._version += 1
        log.info("expert %s now served by %s (catalog version %d)", expert, self._table[expert], self._version)
        return {"catalog_version": self._version, "experts": dict(self._table)}

    def models(self) -> dict[str, Any]:
        """Registered models, the active table and which lanes hold which models."""
        now = time.monotonic()
        self._seen = {r: s for r, s in self._seen.items() if now - s[2] < _SEEN_TTL_S}
        loaded: dict[str, dict[str, int]] = {}
        for lane, resident, _ in self._seen.values():
            for ref in resident:
                loaded.setdefault(ref, {}).setdefault(lane, 0)
                loaded[ref][lane] += 1
        active: dict[str, list[str]] = {}
        for expert, ref in self._table.items():
            active.setdefault(ref, []).append(expert)
        return {
            "catalog_version": self._version,
            "experts": dict(self._table),
            "models": [
                {"ref": m.ref, "name": m.name, "version": m.version, "created": m.created,
                 "metrics": m.metrics, "input_spec": m.input_spec,
                 "active_for": sorted(active.get(m.ref, [])), "loaded_replicas": loaded.get(m.ref, {})}
                for m in list_models(self._registry)
            ],
        }


def catalog_handle(app_name: str) -> Any:
    """A handle to the model catalog of the routine application ``app_name``."""
    return serve.get_deployment_handle("catalog", app_name=app_name)


def simulated_batch_s(batch_ms: float, share: float, n: int) -> float:
    """Seconds a simulated GPU is busy with a batch of ``n``: a fixed ``share`` of ``batch_ms`` plus the
    rest per volume (``batch_ms`` is a batch of one's time). On one H200 the shipped model takes
    0.28 ms for a batch of 1 and 0.23 ms for a batch of 8 (CUDA graphs, bf16): almost all fixed."""
    return batch_ms / 1e3 * (share + (1.0 - share) * n)


def in_time(queued_at: list[float], now: float, timeout_s: float) -> list[int]:
    """Indexes of the requests queued at ``queued_at`` that waited at most ``timeout_s`` by ``now``."""
    return [i for i, t in enumerate(queued_at) if now - t <= timeout_s]


class _Resident:
    """A loaded model that takes itself off its replica's list when Serve's LRU unloads it."""

    def __init__(self, model: LoadedModel, resident: dict[str, int]) -> None:
        self.model = model
        self._resident = resident
        resident[model.ref] = id(self)

    def __del__(self) -> None:
        # Serve calls this on unload, and the garbage collector may call it again later, when
        # the same ref may have been loaded anew: only remove our own registration.
        if self._resident.get(self.model.ref) == id(self):
            del self._resident[self.model.ref]


class Engine:
    """What diagnoses in one replica: models, DICOM reading, dynamic batching, pseudonyms.

    The ingress replicas run one for the routine lane, the ``emergency`` replicas one for theirs.
    Models are Serve-multiplexed by reference (LRU, ``MODELS_PER_REPLICA``); the active ones are
    loaded when the catalog names them, before traffic for them arrives.
    """

    def __init__(self, lane: str, args: DiagnosisArgs, catalog: Any) -> None:
        import torch

        self.lane = lane
        self._args = args
        self._catalog = catalog
        # One torch (or ONNX Runtime) thread per CPU the replica was given: more only oversubscribes the node.
        self._threads = max(1, int(args.lanes[lane].num_cpus))
        torch.set_num_threads(self._threads)
        sizes = args.lanes[lane]
        if sizes.num_gpus:
            # Fractional GPUs share one device's memory unchecked: cap this replica to its budget.
            limit_gpu_memory(sizes.gpu_memory_gb, share=sizes.num_gpus)
        # A simulated GPU (Ray reserved one, torch sees none) is busy as long as a real one would be.
        simulated = sizes.num_gpus > 0 and not torch.cuda.is_available()
        self._simulated_ms = args.simulated_gpu_ms if simulated else 0.0
        self._queue_timeout_s = sizes.queue_timeout_s
        self._key = load_key(args.key_file)
        # Reading DICOM and running the model each get a thread, so they overlap, and the event
        # loop stays free to accept requests and form the next batch.
        self._read_pool = ThreadPoolExecutor(1, thread_name_prefix="read")
        self._infer_pool = ThreadPoolExecutor(1, thread_name_prefix="infer")
        self._infer.set_max_batch_size(args.max_batch_size)
        self._infer.set_batch_wait_timeout_s(args.batch_wait_timeout_s)
        self._resident: dict[str, int] = {}
        self._replica = serve.get_replica_context().replica_id.unique_id
        self.node_type = current_node_type()
        self.catalog_version = 0
        self.experts: dict[str, str] = {}

    async def start(self) -> None:
        """Fetch the routing table, load its models, then follow the catalog in the background.

        The catalog lives in the routine application, which ``serve deploy`` starts alongside the
        emergency one: an emergency replica waits for it (up to ``CATALOG_WAIT_S``).
        """
        deadline = time.monotonic() + CATALOG_WAIT_S
        while True:
            try:
                answer = await self._catalog.sync.remote(self._replica, self.lane, [])
                break
            except Exception as e:  # the routine application not deployed (yet)
                if time.monotonic() > deadline:
                    raise MedrayError(
                        f"lane {self.lane}: no model catalog after {CATALOG_WAIT_S:.0f} s ({type(e).__name__}): "
                        f"deploy the routine application {self._args.app_name!r} too "
                        "(both applications of deploy/serve-diagnosis.yaml)") from None
                await asyncio.sleep(1.0)
        await self.follow(*answer)
        self._sync_task = asyncio.get_running_loop().create_task(self._sync_forever())

    @serve.multiplexed(max_num_models_per_replica=MODELS_PER_REPLICA)
    async def get_model(self, ref: str) -> _Resident:
        """The model ``ref``, loaded from the registry on first use, on the configured backend."""
        load = functools.partial(load_model, self._args.registry, ref, backend=self._args.backend,
                                 threads=self._threads, max_batch=self._args.max_batch_size)
        # In the reading thread, so that inference goes on meanwhile; CUDA graphs captured there replay in
        # the inference thread (checked on an H200: no re-capture, the first call 2 ms).
        model = await asyncio.get_running_loop().run_in_executor(self._read_pool, load)
        log.info("lane %s loaded model %s on backend %s", self.lane, ref, model.backend)
        return _Resident(model, self._resident)

    async def _preload(self) -> None:
        # Load the active models before traffic for them arrives, so a switch costs no latency.
        for ref in sorted(set(self.experts.values())):
            try:
                await self.get_model(ref)
            except MedrayError as e:
                log.warning("lane %s could not preload %s: %s", self.lane, ref, e)

    async def _sync_forever(self) -> None:
        while True:
            await asyncio.sleep(SYNC_PERIOD_S)
            try:
                version, experts = await self._catalog.sync.remote(self._replica, self.lane, sorted(self._resident))
            except Exception as e:  # the catalog restarting must not take the lane down
                log.warning("lane %s: model catalog unreachable (%s)", self.lane, type(e).__name__)
                continue
            if version != self.catalog_version:
                await self.follow(version, experts)

    async def follow(self, version: int, experts: dict[str, str]) -> None:
        """Route by catalog ``version``'s table from now on, its models loaded first."""
        self.catalog_version, self.experts = version, experts
        await self._preload()

    async def diagnose(self, instances: list[bytes], ref: str, first: Dataset | None = None) -> dict[str, Any]:
        """Read one series (the instances' bytes; ``first``: the first one already parsed) and score
        it with model ``ref``.

        Returns the result, or ``{"error": reason, "message": …}`` for input that cannot be used;
        neither ever holds PHI.
        """
        start = time.perf_counter()
        try:
            model = (await self.get_model(ref)).model
            # On the event loop: decoding holds the GIL, so a thread would add a hand-off, not overlap.
            study = _prepare(instances, model, self._args, first)
            read_done = time.perf_counter()
            probability, batch_size = await self._infer((ref, study.x, time.monotonic()))
            if probability is None:
                return {"error": "queue_timeout",
                        "message": f"the {self.lane} lane's model queue is longer than {self._queue_timeout_s:g} s: "
                                   "retry later"}
        except DicomError as e:
            return {"error": e.reason, "message": e.message}
        except MedrayError as e:  # the model cannot be loaded: not the caller's fault
            log.warning("lane %s: model %s unavailable: %s", self.lane, ref, e)
            return {"error": "model_unavailable", "message": f"model {ref} cannot be loaded now; retry later"}
        except Exception as e:
            # Unexpected: report the class only, since a message or traceback could quote the input.
            log.error("lane %s: internal error %s", self.lane, type(e).__name__)
            return {"error": "internal", "message": "internal error; the request was not diagnosed"}
        done = time.perf_counter()
        positive = probability >= self._args.threshold
        spec = finding_spec(model.manifest.finding)
        return {
            "finding": {
                "name": spec.name,
                "probability": round(probability, 6),
                "label": spec.label(positive),
                "threshold": self._args.threshold,
                "body_site": spec.coding("body_site"),
                "code": spec.coding("code") if positive else None,
            },
            "model": model.ref,
            "study": {
                "study_ref": pseudo_uid(self._key, study.study_uid),
                "series_ref": pseudo_uid(self._key, study.series_uid),
                "patient_ref": pseudonym(self._key, study.patient_id, kind="patient") if study.patient_id.strip() else None,
                "instances": study.n_instances,
            },
            "served_by": {"lane": self.lane, "node_type": self.node_type, "backend": model.backend,
                          "batch_size": batch_size},
            "timings_ms": {
                "read_normalize": round((read_done - start) * 1e3, 2),
                "batch_and_infer": round((done - read_done) * 1e3, 2),
            },
        }

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def _infer(self, items: list[tuple[str, np.ndarray, float]]) -> list[tuple[float | None, int]]:
        # (probability, batch size) per item; None for a study that waited past the lane's queue
        # timeout: it is answered 503 instead of taking the model's time (as Triton's queue policy).
        # A batch may hold requests for several models (e.g. during a version switch): one forward
        # pass per model.
        by_ref: dict[str, list[int]] = {}
        for i in in_time([queued for _, _, queued in items], time.monotonic(), self._queue_timeout_s):
            by_ref.setdefault(items[i][0], []).append(i)
        answers: list[tuple[float | None, int]] = [(None, 0)] * len(items)
        loop = asyncio.get_running_loop()
        for ref, indexes in by_ref.items():
            model = (await self.get_model(ref)).model
            batch = np.stack([items[i][1] for i in indexes])
            for i, p in zip(indexes, await loop.run_in_executor(self._infer_pool, self._predict, model, batch)):
                answers[i] = (p, len(indexes))
        return answers

    def _predict(self, model: LoadedModel, batch: np.ndarray) -> list[float]:
        # In the one inference thread: batches wait for the (simulated) GPU as they would for a real one.
        start = time.perf_counter()
        probabilities = predict(model, batch)
        if self._simulated_ms:
            busy = simulated_batch_s(self._simulated_ms, self._args.simulated_gpu_batch_share, len(batch))
            time.sleep(max(0.0, busy - (time.perf_counter() - start)))
        return probabilities


def _prepare(instances: list[bytes], model: LoadedModel, args: DiagnosisArgs, first: Dataset | None) -> Any:
    if len(instances) > args.max_instances:
        raise DicomError("too_large", f"{len(instances)} instances in one request, above the limit of "
                                      f"{args.max_instances}: send the series in parts")
    return prepare(instances, model.spec, max_pixels=args.max_instance_pixels, first=first)
