"""The root exception of the shared library."""


class RelayboxError(Exception):
    """Base of every error relaybox raises on purpose."""
