"""The plain-address fast path (`relaybox.common.addresses.normalize`, used by POST /send and the
mailing parse) accepts only what email-validator accepts, normalized the same way; the rest it
leaves to it. Generated addresses complement the corpus of tests/unit/test_csv_stream.py."""

from __future__ import annotations

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from relaybox.api.emails.schemas import SendEmailRequest
from relaybox.common.addresses import normalize as plain_address


def reference(value: str) -> str | None:
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError:
        return None


TAKEN = [
    "user@example.com",
    "User.Name+tag@Sub.Example.COM",
    "a@b.co",
    "o'brien@example.org",
    "x_y-z{1}|~@mail.example-host.net",
    "test@test.com",
    "postmaster@example.com",  # a case-insensitive mailbox name, lowercased as email-validator
    "Abuse@Example.com",
    "a@a-b.co",
    "a" * 65 + "@example.com",  # email-validator checks the local part's length only in strict mode
    "a@" + ".".join(["b" * 60] * 4) + ".com",
]
LEFT = [
    "x@localhost",  # no period
    "x@example.local",  # special-use
    "x@a.test",
    "x@sub.invalid",
    "a@example.c0m",  # a TLD with a digit: valid, but left to email-validator
    "a@xn--bcher-kva.example",  # Punycode
    "a@ab--cd.example",
    "a..b@example.com",
    ".a@example.com",
    "a.@example.com",
    "a@example.com.",
    "a@-example.com",
    "a@example-.com",
    "a@123.456",
    '"quoted"@example.com',
    "Name <a@example.com>",
    "ü@example.com",
    "a@bücher.example",
    "a@[127.0.0.1]",
    "@example.com",
    "a@",
    "a@" + "b" * 64 + ".com",  # a label over 63
    "a@" + ".".join(["b" * 63] * 4) + ".com",  # over 254 in all
]


@pytest.mark.parametrize("value", TAKEN)
def test_plain_addresses_are_normalized_as_email_validator_does(value: str) -> None:
    assert plain_address(value) is not None
    assert plain_address(value) == reference(value)


@pytest.mark.parametrize("value", LEFT)
def test_anything_else_is_left_to_email_validator(value: str) -> None:
    assert plain_address(value) is None


_PART = st.text(alphabet="aZ9._-+'!~@xn--ütestlocalinvalid", min_size=0, max_size=70)


@settings(max_examples=3000, deadline=None)
@given(local=_PART, domain=_PART)
def test_the_fast_path_never_disagrees_with_email_validator(local: str, domain: str) -> None:
    value = f"{local}@{domain}"
    fast = plain_address(value)
    if fast is not None:
        assert fast == reference(value), value


@settings(max_examples=1500, deadline=None)
@given(
    labels=st.lists(st.from_regex(r"[A-Za-z0-9-]{1,64}", fullmatch=True), min_size=1, max_size=5),
    local=st.from_regex(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,70}", fullmatch=True),
)
def test_host_names_of_every_shape_agree(labels: list[str], local: str) -> None:
    value = f"{local}@{'.'.join(labels)}"
    fast = plain_address(value)
    if fast is not None:
        assert fast == reference(value), value


def test_the_request_model_gives_the_same_addresses_as_before() -> None:
    request = SendEmailRequest.model_validate(
        {"to": "Rcpt@Example.COM", "from": "Sender@Mail.Example.org", "subject": "s", "text": "t"}
    )
    assert request.to == reference("Rcpt@Example.COM") == "Rcpt@example.com"
    assert request.from_ == "Sender@mail.example.org"
