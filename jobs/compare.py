"""Ray job entrypoint: `ray job submit --working-dir . -- python -m jobs.compare ...`."""

import sys

from pipeline.compare import main

if __name__ == "__main__":
    sys.exit(main())
