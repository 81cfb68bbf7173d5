"""Global placement: a workload profile in, Ray scheduling options out.

:mod:`~medray.scheduling.placement` is the policy as pure functions (no Ray), :mod:`~medray.scheduling.load`
reads the running cluster (free capacity, temperatures, drained nodes), :mod:`~medray.scheduling.options`
joins them into the options every workload passes to Ray.
"""
