"""Entry script of the frozen daemon (node_daemon/__main__.py uses a relative import, which a
frozen top-level script cannot)."""

import sys

from node_daemon.main import main

sys.exit(main())
