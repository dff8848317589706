"""`python -m pipeline.generate`: the same as `tart generate`."""

import sys

from ..cli import start_console
from .cli import main

start_console("generate", sys.argv[1:])
sys.exit(main())
