"""``python -m caloforge.cli``: the same as the ``caloforge`` command (used with torchrun:
``torchrun --nproc_per_node N -m caloforge.cli train ...``)."""

import sys

from caloforge.cli import main

sys.exit(main())
