"""`python -m pipeline.embed`: the same as `tart embed`."""

import sys

from ..cli import start_console
from .cli import main

start_console("embed", sys.argv[1:])
sys.exit(main())
