"""`python -m jalign ...` is the `jalign` command."""

import sys

from jalign.cli import main

sys.exit(main())
