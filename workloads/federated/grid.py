"""Flower's ``Grid`` over medray's site actors: how the coordinator's ServerApp reaches the sites.

Flower's runtimes deliver messages through a SuperLink to SuperNodes, or (simulation) to a pool of
identical Ray actors that cannot be pinned to a site. Here each Flower node is one
:class:`~workloads.federated.site.SiteNode` actor started on its own site, and
:class:`SiteGrid` implements Flower's ``Grid`` interface (``push_messages`` / ``pull_messages`` /
``send_and_receive``) with Ray calls to them; Flower's workflows (SecAgg+, FedAvg, FedProx) run on
top unchanged.

A site that fails or dies answers with an error reply, which is what Flower's workflows expect of
a dropped node (SecAgg+ then recovers the round when enough neighbours remain above its threshold).

:attr:`SiteGrid.received` keeps every reply the coordinator got (what "the server sees"), and
:attr:`SiteGrid.stage_seconds` the wall time of each SecAgg+ stage, for tests and benchmarks.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from flwr.app import Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.serverapp.grid import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

__all__ = ["SiteGrid"]

# Flower's error code for an exception in a ClientApp (flwr.supercore.constant.ErrorCode).
_CLIENT_APP_RAISED = 2


def _stage(message: Message) -> str:
    """The SecAgg+ stage a message belongs to, else its message type."""
    configs = message.content.config_records.get(RECORD_KEY_CONFIGS) if message.has_content() else None
    if configs is not None and Key.STAGE in configs:
        return str(configs[Key.STAGE])
    return message.metadata.message_type


class SiteGrid(Grid):
    """A Flower Grid whose nodes are site actors (``node_id -> actor handle`` with a ``handle`` method)."""

    def __init__(self, nodes: Mapping[int, Any], *, run_id: int = 1) -> None:
        if SUPERLINK_NODE_ID in nodes:
            raise ValueError(f"node id {SUPERLINK_NODE_ID} is the coordinator's (Flower's SUPERLINK_NODE_ID)")
        self._nodes = dict(nodes)
        self._run = Run.create_empty(run_id)
        # Flower stamps every message this process creates with its task identity (process-wide).
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, SUPERLINK_NODE_ID
        self._pending: dict[str, tuple[Message, Any]] = {}
        self.received: list[Message] = []
        self.stage_seconds: dict[str, float] = defaultdict(float)

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._nodes)

    def drop_node(self, node_id: int) -> None:
        """Forget a node (its actor died): later messages to it get an error reply at once."""
        self._nodes.pop(node_id, None)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            msg.metadata.__dict__["_run_id"] = self._run.run_id
            node = self._nodes.get(msg.metadata.dst_node_id)
            ref = node.handle.remote(msg) if node is not None else None
            self._pending[msg.metadata.message_id] = (msg, ref)
            ids.append(msg.metadata.message_id)
        return ids

    def _reply(self, msg: Message, ref: Any) -> Message:
        import ray

        try:
            if ref is None:
                raise RuntimeError(f"node {msg.metadata.dst_node_id} is gone")
            reply = ray.get(ref)
        except Exception as e:  # a site's failure is a dropped node for Flower, never a crash here
            if isinstance(e, ray.exceptions.RayActorError):
                self.drop_node(msg.metadata.dst_node_id)
            reply = Message(Error(code=_CLIENT_APP_RAISED, reason=f"{type(e).__name__}: {str(e)[:500]}"),
                            reply_to=msg)
        reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex
        return reply

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        import ray

        wanted = [i for i in message_ids if i in self._pending]
        refs = {self._pending[i][1]: i for i in wanted if self._pending[i][1] is not None}
        ready = set(ray.wait(list(refs), num_returns=len(refs), timeout=0)[0]) if refs else set()
        out = []
        for i in wanted:
            msg, ref = self._pending[i]
            if ref is None or ref in ready:
                del self._pending[i]
                out.append(self._reply(msg, ref))
        self.received.extend(out)
        return out

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        import ray

        messages = list(messages)
        stage = _stage(messages[0]) if messages else ""
        t0 = time.perf_counter()
        ids = list(self.push_messages(messages))
        refs = [self._pending[i][1] for i in ids if self._pending[i][1] is not None]
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=timeout)
        replies = list(self.pull_messages(ids))
        for i in ids:  # past the timeout: the rest count as dropped
            self._pending.pop(i, None)
        self.stage_seconds[stage] += time.perf_counter() - t0
        return replies
