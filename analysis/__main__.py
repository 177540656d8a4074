"""thermograd-analysis: see analysis.cli."""

import sys

from thermograd.analysis.cli import main

if __name__ == "__main__":
    sys.exit(main())
