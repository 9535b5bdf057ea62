"""``python -m cloakd.daemon.cli``: the same as the ``cloakd`` command."""

import sys

from . import main

sys.exit(main())
