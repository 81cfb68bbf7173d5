"""The ``medray`` command: :mod:`~medray.cli.main` parses and dispatches; one module per command
(``up``, ``down``, ``status``, ``ray_start``, ``synth``, ``kuberay``, ``models``, ``demo``, ``audit``,
``auth`` for ``medray token``, ``serve``), each with ``add_parser(subparsers)`` and ``run(args) -> int``;
:mod:`~medray.cli.table` is the one text-table formatter."""
