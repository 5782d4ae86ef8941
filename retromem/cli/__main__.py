"""``python -m retromem.cli``: the ``retromem`` command (what ``accelerate launch -m retromem.cli`` runs)."""

import sys

from retromem.cli import main

sys.exit(main())
