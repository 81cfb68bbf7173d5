"""medray: elastic compute for hospital AI on an asymmetric Ray cluster.

Modules, each one concept: ``roles`` (node types from cluster.yaml), ``scheduling`` (placement),
``local_cluster`` (the embedded cluster), ``status``, ``gpu``, ``synth`` (synthetic cohort),
``imaging`` / ``dicom_series`` / ``pseudonym`` (shared medical-data code), ``registry`` (models),
``guard`` (per-node GPU guard), ``broker`` (priorities, lending GPUs), ``autoscaling``,
``metrics``, ``logs``, ``report``, ``kuberay``, ``demo`` and ``cli``.
"""

from medray.errors import MedrayError
from medray.roles import NodeType, load_node_types
from medray.scheduling import Placement, WorkloadProfile, place, ray_options

__version__ = "0.1.0"

__all__ = [
    "MedrayError",
    "NodeType",
    "Placement",
    "WorkloadProfile",
    "load_node_types",
    "place",
    "ray_options",
    "__version__",
]
