"""`python -m thermograd run -- CMD`: the same as the `thermograd` command."""

import sys

from thermograd.cli import main

sys.exit(main())
