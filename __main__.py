"""`python -m robustgrid ...` is the `robustgrid` command."""
import sys

from .runner.cli import main

sys.exit(main())
