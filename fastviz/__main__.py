"""`python -m fastviz ...` (and `torchrun -m fastviz atlas ...`): the `fastviz` command."""

import sys

from .cli import main

sys.exit(main())
