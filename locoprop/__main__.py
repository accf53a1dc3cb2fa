"""``python -m locoprop``: the command line of the experiment harness (:mod:`locoprop.experiments.cli`)."""
import sys

from .experiments.cli import main

if __name__ == "__main__":
    sys.exit(main())
