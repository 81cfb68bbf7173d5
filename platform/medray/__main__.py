"""``python -m medray`` is the ``medray`` command."""

import sys

from medray.cli.main import main

sys.exit(main())
