"""`python -m bench.peers [--quick] [--check] [--builds relaybox,celery,dramatiq]`."""

import sys

from bench.peers.run import main

sys.exit(main())
