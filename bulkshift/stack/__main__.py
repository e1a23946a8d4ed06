"""``python -m bulkshift.stack up|down|status``: see :mod:`bulkshift.stack.run`."""

import sys

from bulkshift.stack.run import main

sys.exit(main())
