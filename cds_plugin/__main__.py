"""`python -m cds_plugin ...`: the same command line as the `cds-plugin` script, for when the script is not
on PATH (a venv not activated, a wheel installed with `--target`)."""

import sys

from cds_plugin.cli import main

sys.exit(main())
