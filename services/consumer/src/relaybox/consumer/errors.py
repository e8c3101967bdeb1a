"""Consumer errors."""

from relaybox.common.errors import RelayboxError


class ConsumerError(RelayboxError):
    """Root of the consumer's own errors."""


class PoisonMessageError(ConsumerError):
    """The message can never be handled (bad JSON, unknown row): dead-letter it at once."""


class GiveBackError(ConsumerError):
    """The message was not handled and is put back as it came (the consumer is stopping)."""


class SendNotRecordedError(ConsumerError):
    """The provider accepted a send that could not be recorded (a bug): the row stays SENDING
    until its lease ends; the sweeper then re-enqueues it, which may send it again."""
