"""The status machine of every outbound row (`emails`, outbound `messages`): its states, which
of them are still in flight, and their SQL spelling, for the services that test them."""

from __future__ import annotations

from enum import StrEnum


class DeliveryStatus(StrEnum):
    """PENDING → SENDING → SENT | FAILED; a message then SENT → DELIVERED → READ."""

    PENDING = "PENDING"
    SENDING = "SENDING"
    SENT = "SENT"
    FAILED = "FAILED"
    DELIVERED = "DELIVERED"
    READ = "READ"


IN_FLIGHT = (DeliveryStatus.PENDING, DeliveryStatus.SENDING)
"""Not final yet: it may still be sent."""
IN_FLIGHT_SQL = "(" + ", ".join(f"'{s}'" for s in IN_FLIGHT) + ")"
"""`IN_FLIGHT` as an SQL list: `status IN ('PENDING', 'SENDING')`."""
