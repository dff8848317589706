"""Ray job entrypoint: `ray job submit --working-dir . -- python -m jobs.grid ...`."""

import sys

from pipeline.grid import main

if __name__ == "__main__":
    sys.exit(main())
