"""`thermograd-exporter`: see exporter.cli."""

import sys

from thermograd.exporter.cli import main

if __name__ == "__main__":
    sys.exit(main())
