"""``python -m mmrelearn``: the command line, as the ``mmrelearn`` script."""
import sys

from .cli import main

sys.exit(main())
