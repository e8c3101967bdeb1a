"""Address checks of mailing rows: email-validator's verdict, with the strict fast path of
`relaybox.common.addresses` (most rows of a million-row upload never reach email-validator;
its message is the reason stored for an invalid row)."""

from __future__ import annotations

from email_validator import EmailNotValidError, validate_email

from relaybox.common.addresses import normalize as normalize

EMPTY_REASON = "The email column is empty."


def check(value: str) -> tuple[str, str] | str:
    """(normalized address, de-duplication key) for a valid address, else the reason it is not.

    The key is the normalized address lower-cased: ``Bob@x.org`` and ``bob@X.org`` are one
    recipient.
    """
    normalized = normalize(value)
    if normalized is None:
        if not value:
            return EMPTY_REASON
        try:
            normalized = validate_email(value, check_deliverability=False).normalized
        except EmailNotValidError as exc:
            return str(exc)
    return (normalized, normalized.lower())
