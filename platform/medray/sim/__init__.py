"""A hospital day at fleet scale: a discrete-event simulator that drives medray's own policy objects.

No Ray and no real time: :mod:`~medray.sim.engine` feeds :func:`medray.scheduling.placement.plan`,
:class:`medray.broker.policy.BrokerCore` and :func:`medray.cluster.guard.next_state` with simulated
time, on a fleet read from a ``cluster.yaml`` at real scale, through a seeded day from a documented
trace config (:mod:`~medray.sim.trace`). :mod:`~medray.sim.policies` holds medray's policy and the
baselines it is compared with in the same run, :mod:`~medray.sim.report` the figures and plots, and
:mod:`~medray.sim.calibration` the check against the local burst benchmark's measured run.
``python -m medray.sim`` (or ``benchmarks/sim_day.py``) runs a day; docs/simulation.md says how and
what is modelled.
"""

from medray.sim.calibration import calibrate
from medray.sim.engine import DayLog, simulate
from medray.sim.policies import POLICIES, Policy, policy_named
from medray.sim.report import DaySummary, plot, summarize, table
from medray.sim.trace import SimConfig, load_config

__all__ = ["SimConfig", "load_config", "Policy", "POLICIES", "policy_named", "DayLog", "simulate",
           "DaySummary", "summarize", "table", "plot", "calibrate"]
