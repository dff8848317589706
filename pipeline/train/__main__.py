"""`python -m pipeline.train`: the same as `tart train`."""

import sys

from ..cli import start_console
from .cli import main

start_console("train", sys.argv[1:])
sys.exit(main())
