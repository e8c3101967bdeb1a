"""Consumer errors."""

from relaybox.common.errors import RelayboxError


class ConsumerError(RelayboxError):
    """Root of the consumer's own errors."""


class PoisonMessageError(ConsumerError):
    """The message can never be handled (bad JSON, unknown row): dead-letter it at once."""
