"""The cluster: node types from cluster.yaml, the local cluster, autoscaling, KubeRay, status, NVML, the GPU guard.

:mod:`~medray.cluster.node_types` (cluster.yaml's node types and labels), :mod:`~medray.cluster.local`
(the embedded cluster and ``medray up --local``), :mod:`~medray.cluster.autoscaling`,
:mod:`~medray.cluster.kuberay`, :mod:`~medray.cluster.local_serve` (a Serve app on the connected cluster), :mod:`~medray.cluster.status` (one row per node),
:mod:`~medray.cluster.nvml` (GPU readings), :mod:`~medray.cluster.guard` (the per-node GPU guard) and
:mod:`~medray.cluster.ray_internals` (the one door to Ray's private modules).
"""
