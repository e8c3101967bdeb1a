"""relaybox, the command-line client of the API (HTTP only)."""
