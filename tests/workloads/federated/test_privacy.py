"""The site's privacy policy, filter, accountant and budget (no cluster)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.task_identity import TaskIdentity

from medray.errors import ConfigError
from workloads.federated.privacy import (
    SiteDpFilter,
    SitePolicy,
    epsilon,
    load_policy,
    rounds_within_budget,
    write_policy,
)


def test_epsilon_grows_with_rounds_as_opacus_rdp_accountant_steps_it():
    from opacus.accountants import RDPAccountant

    policy = SitePolicy(site="a", clip_norm=1.0, noise_multiplier=1.1, delta=1e-5)
    accountant, spent = RDPAccountant(), []
    for _ in range(5):
        accountant.step(noise_multiplier=1.1, sample_rate=1.0)
        spent.append(accountant.get_epsilon(1e-5))
    ours = [epsilon(policy, r) for r in range(1, 6)]
    assert ours == pytest.approx(spent, rel=1e-9)
    assert all(a < b for a, b in zip(ours, ours[1:])) and epsilon(policy, 0) == 0.0
    assert epsilon(SitePolicy(site="a", clip_norm=1.0, noise_multiplier=0.0), 1) == math.inf


def test_the_budget_stops_the_run_before_the_round_that_would_exceed_it():
    tight = SitePolicy(site="partner-b", clip_norm=1.0, noise_multiplier=1.1, epsilon_budget=6.0)
    loose = SitePolicy(site="partner-a", clip_norm=1.0, noise_multiplier=2.0, epsilon_budget=100.0)
    allowed = max(r for r in range(1, 20) if epsilon(tight, r) <= 6.0)
    rounds, reason = rounds_within_budget({"partner-a": loose, "partner-b": tight}, 10)
    assert rounds == allowed
    assert f"before round {allowed + 1}" in reason and "partner-b" in reason and "6" in reason
    assert rounds_within_budget({"partner-a": loose}, 3) == (3, None)
    none, reason = rounds_within_budget({"partner-b": tight.__class__(**{**tight.public(), "epsilon_budget": 1.0})}, 3)
    assert none == 0 and "before round 1" in reason


def test_policy_is_read_from_the_site_storage_and_missing_or_bad_ones_say_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="federated-policy.json.*operator"):
        load_policy(tmp_path)
    policy = SitePolicy(site="partner-a", clip_norm=2.0, noise_multiplier=0.5)
    write_policy(tmp_path, policy)
    assert load_policy(tmp_path) == policy
    (tmp_path / "federated-policy.json").write_text('{"site": "x", "clip_norm": 1, "noise_multiplier": 1, "oops": 1}')
    with pytest.raises(ConfigError, match="keys"):
        load_policy(tmp_path)
    with pytest.raises(ConfigError, match="clip_norm"):
        SitePolicy(site="a", clip_norm=0.0, noise_multiplier=1.0)


def _train_message(update_norm: float, *, secagg: bool) -> tuple[Message, list[np.ndarray]]:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    content = compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters([np.zeros(1000, np.float32)]), {}), True)
    if secagg:
        from flwr.app import ConfigRecord

        content.config_records[RECORD_KEY_CONFIGS] = ConfigRecord({})
    msg = Message(content, 7, MessageType.TRAIN, group_id="1")
    rng = np.random.default_rng(0)
    update = rng.normal(size=1000).astype(np.float32)
    update *= update_norm / np.linalg.norm(update)
    return msg, [update]


def _client(update: list[np.ndarray]):
    def call_next(msg: Message, ctxt: Context) -> Message:
        res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(update), 10, {"train_loss": 0.5})
        return Message(compat.fitres_to_recorddict(res, True), reply_to=msg)
    return call_next


def _ctx() -> Context:
    return Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})


def test_the_filter_clips_and_noises_the_update_and_strips_metrics():
    policy = SitePolicy(site="a", clip_norm=1.0, noise_multiplier=0.01, epsilon_budget=1e9)
    dp = SiteDpFilter(policy)
    msg, update = _train_message(50.0, secagg=True)
    out = dp(msg, _ctx(), _client(update))
    res = compat.recorddict_to_fitres(out.content, keep_input=True)
    released = parameters_to_ndarrays(res.parameters)[0]
    clipped = update[0] / 50.0
    noise = released - clipped
    assert noise.std() == pytest.approx(policy.noise_std, rel=0.1)  # 2 * C * z = 0.02
    assert np.corrcoef(released, clipped)[0, 1] > 0.8 and res.metrics == {} and dp.releases == 1


def test_the_filter_refuses_updates_outside_secure_aggregation_and_past_the_budget():
    policy = SitePolicy(site="a", clip_norm=1.0, noise_multiplier=1.0, epsilon_budget=6.0)
    dp = SiteDpFilter(policy)
    msg, update = _train_message(0.5, secagg=False)
    refused = dp(msg, _ctx(), _client(update))
    assert refused.has_error() and "SecAgg+" in refused.error.reason and dp.releases == 0
    allowed = max(r for r in range(1, 20) if epsilon(policy, r) <= 6.0)
    for _ in range(allowed):
        msg, update = _train_message(0.5, secagg=True)
        assert not dp(msg, _ctx(), _client(update)).has_error()
    msg, update = _train_message(0.5, secagg=True)
    over = dp(msg, _ctx(), _client(update))
    assert over.has_error() and "budget" in over.error.reason and dp.releases == allowed
