"""`python -m relaybox.cli`: the same as the `relaybox` console script."""

from relaybox.cli.app import main

main()
