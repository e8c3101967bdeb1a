"""The command-line client (`relaybox`) driven against the real API."""
