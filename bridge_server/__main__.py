import sys

from bridge_server.cli import main

sys.exit(main())
