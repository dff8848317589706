"""Ray job entrypoint for the full pipeline: `python -m jobs.pipeline ...` (generate -> train -> grid)."""

import sys

from pipeline.full import main

if __name__ == "__main__":
    sys.exit(main())
