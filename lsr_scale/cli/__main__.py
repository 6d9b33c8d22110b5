"""``python -m lsr_scale.cli``: the same as the ``lsr-scale`` command."""

import sys

from . import main

sys.exit(main())
