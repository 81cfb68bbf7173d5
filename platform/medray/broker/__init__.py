"""The priority broker: GPUs lent from research to clinical work in a burst, and given back after it.

Ray has neither priorities nor preemption; the broker adds both above it, cooperatively. Priority
classes, highest first: ``emergency`` > ``clinical`` > ``batch`` > ``research``.

* **Runs** (research or batch work that can stop and resume) are started *by the broker*
  (:func:`medray.broker.actor.submit_run`) from an import path, so it can start them again: the entrypoint is called as
  ``fn(config, run_id=…, resume_from=…)``. A run polls :func:`medray.broker.preemption.yield_requested` at step or epoch
  boundaries (cheap enough for every step), saves a checkpoint and reports it
  (:func:`medray.broker.preemption.report_checkpoint`), and returns when asked to yield: its GPUs are free.
* **Lanes** (clinical work such as a Serve deployment) bring the demand: replicas that want a GPU and
  cannot get one. The broker reads it itself from Ray's actor table for Serve deployments it watches
  (:func:`medray.broker.client.watch_serve`: replicas pending creation, and replicas alive on lent nodes), or takes it
  pushed (:func:`medray.broker.client.report_demand`) from other work.
* **Lending**: when a lane outranking some runs has had pending units for ``pressure_grace_s``, the
  broker asks that many of the lowest-priority runs to yield; the lane's pending replicas then land on
  the freed GPUs through their placement fallbacks (e.g. ``roles=("infer", "train")``).
* **Returning**: once no lane has pending units or units on lent nodes for ``calm_s``, the broker
  starts the yielded runs again from their last checkpoint.
* **Stopping** (:func:`medray.broker.actor.stop_run`, and :func:`medray.broker.actor.stop_broker` for every run): a yield that is never
  resumed. Runs should end this way: a killed Ray Train run leaves its placement group (its GPUs)
  behind until Train's cleaner sees the controller dead, which needs Ray's State API (a dashboard).
* **Drains**: GPU guards (:mod:`medray.cluster.guard`) drain their nodes through Ray and report them
  here, where each drain becomes an event and the temperatures feed load-aware placement.

Every decision is an event with a reason: kept in a ring buffer (:func:`medray.broker.client.broker_summary`), logged
through :mod:`medray.logs` and counted in ``medray_broker_events_total{action}``.

The broker is a named, detached actor (``medray-broker`` in namespace ``medray``) on the head node.
Runs are its tasks, so they share its fate: stopping the broker stops its runs.

Modules: :mod:`~medray.broker.policy` (the decisions, pure: no Ray), :mod:`~medray.broker.actor` (the
actor that carries them out, and the runs it starts), :mod:`~medray.broker.client` (calls any process
makes: demand, lanes, drains, the summary) and :mod:`~medray.broker.preemption` (what a training run
calls: the yield poll and its checkpoints); :mod:`~medray.broker.lanes` names the clinical lanes and
the priority header of the HTTP API.
"""
