"""``python -m neutrino.cli`` runs the ``neutrino`` command (as ``python -m neutrino`` does)."""

import sys

from . import main

sys.exit(main())
