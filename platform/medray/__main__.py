"""``python -m medray`` is the ``medray`` command."""

import sys

from medray.cli import main

sys.exit(main())
