"""Ray job entrypoint: `ray job submit --working-dir . -- python -m jobs.generate ...`."""

import sys

from pipeline.generate import main

if __name__ == "__main__":
    sys.exit(main())
