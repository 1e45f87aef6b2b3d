"""`python -m tap_gtmcli.sandbox`, the same as the `gtmcli-sandbox` script."""

import sys

from tap_gtmcli.sandbox.cli import main

sys.exit(main())
