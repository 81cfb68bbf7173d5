"""``medray demo``: the runner that chains the workloads' stages, the HTML report and its figures."""
