import sys

from thermograd.trainer.cli import main

if __name__ == "__main__":
    sys.exit(main())
