"""Ray job entrypoint: `ray job submit --working-dir . -- python -m jobs.embed ...`."""

import sys

from pipeline.embed import main

if __name__ == "__main__":
    sys.exit(main())
