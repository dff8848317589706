"""Ray job entrypoint: `ray job submit --working-dir . -- python -m jobs.train ...`."""

import sys

from pipeline.train import main

if __name__ == "__main__":
    sys.exit(main())
