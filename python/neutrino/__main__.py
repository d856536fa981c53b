"""``python -m neutrino`` runs the ``neutrino`` command."""

import sys

from .cli import main

sys.exit(main())
