"""The ``medray`` command: :mod:`~medray.cli.main` parses and dispatches; one module per command."""
