"""The streaming CSV parser of mailing uploads, and the address checks behind it."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable

import pytest
from email_validator import EmailNotValidError, validate_email

from relaybox.common.mailings import csv_stream
from relaybox.common.mailings.csv_stream import (
    LATIN_1,
    CsvFormatError,
    NotUtf8Error,
    decode,
    iter_rows,
    lines,
)
from relaybox.consumer.mailings import addresses

# A header in the 2nd column, a quoted cell with a comma and a line break, CRLF endings, a
# blank line, a UTF-8 address and a row whose email cell is empty.
SAMPLE = (
    'name, Email ,note\r\n"Smith, John",john@example.com,"two\r\nlines"\r\n'
    "\r\nJosé,josé@exemple.fr,\r\nNobody,,here\r\n,bad@,\r\n"
).encode()
SAMPLE_ROWS = [
    (2, "john@example.com"),
    (4, "josé@exemple.fr"),
    (5, ""),
    (6, "bad@"),
]


def rows(*chunks: bytes, encoding: str | None = None) -> list[tuple[int, str]]:
    return list(iter_rows(list(chunks), encoding=encoding))


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# -- chunk boundaries -------------------------------------------------------------------------


def test_sample_in_one_chunk() -> None:
    assert rows(SAMPLE) == SAMPLE_ROWS


def test_a_chunk_boundary_at_every_byte_position() -> None:
    for cut in range(len(SAMPLE) + 1):
        assert rows(*split(SAMPLE, [cut])) == SAMPLE_ROWS, cut


def test_two_chunk_boundaries_at_every_pair_of_positions() -> None:
    for a, b in itertools.combinations(range(1, len(SAMPLE)), 2):
        assert rows(*split(SAMPLE, [a, b])) == SAMPLE_ROWS, (a, b)


def test_one_byte_chunks_and_empty_chunks() -> None:
    one_byte = [SAMPLE[i : i + 1] for i in range(len(SAMPLE))]
    assert rows(*one_byte) == SAMPLE_ROWS
    assert rows(b"", *one_byte, b"") == SAMPLE_ROWS


# -- encodings --------------------------------------------------------------------------------


def test_utf8_bom_is_dropped_even_split_across_chunks() -> None:
    data = b"\xef\xbb\xbfEMAIL\r\nj\xc3\xa9@exemple.fr\r\n"
    assert rows(data) == [(2, "jé@exemple.fr")]
    assert rows(data[:1], data[1:2], data[2:4], data[4:]) == [(2, "jé@exemple.fr")]


def test_bom_without_header_is_a_single_column_file() -> None:
    assert rows(b"\xef\xbb\xbfa@example.com\nb@example.com") == [
        (1, "a@example.com"),
        (2, "b@example.com"),
    ]


def test_latin1_file_decided_on_the_first_chunk() -> None:
    data = "email\nJosé@exemple.fr\nrené@exemple.fr\n".encode(LATIN_1)
    assert rows(data) == [(2, "José@exemple.fr"), (3, "rené@exemple.fr")]


def test_latin1_byte_after_ascii_chunks_switches_in_place() -> None:
    data = ("email\n" + "a@example.com\n" * 20 + "josé@exemple.fr\n").encode(LATIN_1)
    chunks = split(data, range(16, len(data), 16))
    found = rows(*chunks)
    assert found[-1] == (22, "josé@exemple.fr")
    assert len(found) == 21


def test_invalid_utf8_after_non_ascii_text_asks_for_a_latin1_pass() -> None:
    data = "email\nrené@exemple.fr\n".encode() + "josé@exemple.fr\n".encode(LATIN_1)
    with pytest.raises(NotUtf8Error):
        rows(data[:20], data[20:])
    assert rows(data[:20], data[20:], encoding=LATIN_1) == [
        (2, "renÃ©@exemple.fr"),
        (3, "josé@exemple.fr"),
    ]


def test_utf8_sequence_cut_at_the_end_of_the_file_is_latin1() -> None:
    assert rows(b"email\nab@exemple.fr\xc3") == [(2, "ab@exemple.fr\xc3")]


def test_forced_latin1_drops_a_bom() -> None:
    assert list(decode([b"\xef\xbb\xbfa\xe9"], LATIN_1)) == ["a\xe9"]


# -- line endings, quoting, blank rows --------------------------------------------------------


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
def test_line_endings(eol: str) -> None:
    data = eol.join(["email", "a@example.com", "", "b@example.com"]).encode()
    assert rows(data) == [(2, "a@example.com"), (4, "b@example.com")]
    assert rows(*split(data, range(1, len(data)))) == [(2, "a@example.com"), (4, "b@example.com")]


def test_lines_keep_their_endings_and_join_a_split_crlf() -> None:
    assert list(lines(["a\r", "\nb\rc", "\n", "d"])) == ["a\r\n", "b\r", "c\n", "d"]


def test_quoted_fields() -> None:
    data = b'"email","name"\n"a@example.com","Doe, Jane"\n" b@example.com ",""""\n'
    assert rows(data) == [(2, "a@example.com"), (3, "b@example.com")]


def test_quoted_value_over_several_lines_is_one_row() -> None:
    data = b'note,email\n"one\ntwo\nthree",a@example.com\nx,b@example.com\n'
    assert rows(data) == [(2, "a@example.com"), (3, "b@example.com")]


def test_blank_and_whitespace_rows_are_skipped_but_counted() -> None:
    data = b"\n  \nemail\n\n \t \n,\na@example.com\n\n"
    assert rows(data) == [(7, "a@example.com")]


def test_values_are_trimmed() -> None:
    assert rows(b"email\n  a@example.com\t\n\xc2\xa0b@example.com\n") == [
        (2, "a@example.com"),
        (3, "b@example.com"),
    ]


# -- layout -----------------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["email", "EMAIL", " Email ", "eMail"])
def test_header_detection_is_case_insensitive_and_trimmed(header: str) -> None:
    assert rows(f"{header}\na@example.com\n".encode()) == [(2, "a@example.com")]


def test_email_column_among_others() -> None:
    data = b"First Name,Last Name,E-mail,email,Phone\nA,B,x,a@example.com,1\nC,D\n"
    assert rows(data) == [(2, "a@example.com"), (3, "")]


def test_headerless_single_column() -> None:
    data = b"a@example.com\nnot-an-address\n\nb@example.com\n"
    assert rows(data) == [(1, "a@example.com"), (2, "not-an-address"), (4, "b@example.com")]


def test_headerless_single_column_tolerates_trailing_empty_cells() -> None:
    expected = [(1, "a@example.com"), (2, "b@example.com")]
    assert rows(b"a@example.com,\nb@example.com,,\n") == expected


def test_headerless_row_with_more_cells_keeps_them_for_the_error() -> None:
    data = b"a@example.com\nb@example.com, c@example.com\n"
    assert rows(data) == [(1, "a@example.com"), (2, "b@example.com,c@example.com")]


def test_multi_column_file_without_an_email_column_is_refused() -> None:
    with pytest.raises(CsvFormatError, match="row 1 has 2 columns and none is named 'email'"):
        rows(b"name,address\nJane,jane@example.com\n")


def test_multi_column_first_row_after_blank_lines_reports_its_row() -> None:
    with pytest.raises(CsvFormatError, match="row 3 has 3 columns"):
        rows(b"\n\na,b,c\n")


def test_empty_file_has_no_rows() -> None:
    assert rows() == []
    assert rows(b"") == []
    assert rows(b"email\r\n") == []
    assert rows(b"\xef\xbb\xbf") == []


def test_oversized_field_is_a_format_error_with_its_row() -> None:
    data = b'email\na@example.com\n"' + b"x" * 200_000 + b'"\n'
    with pytest.raises(CsvFormatError, match="row 3: field larger than field limit"):
        rows(data)


def test_overlong_line_is_a_format_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csv_stream, "MAX_LINE_CHARS", 100)
    with pytest.raises(CsvFormatError, match="longer than 100 characters"):
        rows(b"email\n", b"x" * 60, b"x" * 60)


def test_nul_bytes_pass_through() -> None:
    assert rows(b"email\na\x00b@example.com\n") == [(2, "a\x00b@example.com")]


# -- addresses --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "normalized"),
    [
        ("user1@example.com", "user1@example.com"),
        ("User.Name+tag@Example.COM", "User.Name+tag@example.com"),
        ("Info@Example.com", "info@example.com"),
        ("josé@exemple.fr", "josé@exemple.fr"),
        ("a@bücher.de", "a@bücher.de"),
    ],
)
def test_valid_addresses(value: str, normalized: str) -> None:
    assert addresses.check(value) == (normalized, normalized.lower())


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("invalid-email", "must have an @-sign"),
        ("@domain.com", "something before the @-sign"),
        ("a@b", "should have a period"),
        ("a..b@example.com", "two periods in a row"),
        ("a@localhost.localhost", "special-use or reserved"),
        ("a@ab--cd.com", "two letters followed by two dashes"),
        ("", "empty"),
    ],
)
def test_invalid_addresses_carry_the_validator_reason(value: str, reason: str) -> None:
    result = addresses.check(value)
    assert isinstance(result, str)
    assert reason in result


def _validator(value: str) -> str | None:
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError:
        return None


LOCAL_PARTS = ["a", "Z", "0", ".", "-", "_", "+", "'", "~", "{", "é", " ", '"', "Info", "x" * 70]
LABEL_PARTS = ["a", "Z", "9", "-", "--", "xn--", "ü", "_", "x" * 40]
TLDS = ["com", "COM", "io", "c", "c1", "1", "test", "local", "arpa", "onion", "invalid", "x" * 64]


def _awkward(rnd: random.Random) -> str:
    """Mostly plausible addresses, each with a few awkward pieces mixed in."""
    odd = rnd.random() < 0.3
    local = "".join(
        rnd.choice(LOCAL_PARTS if odd else LOCAL_PARTS[:3]) for _ in range(rnd.randint(0, 4))
    )
    labels = [
        "".join(rnd.choice(LABEL_PARTS if odd else LABEL_PARTS[:3]) for _ in range(n))
        for n in (rnd.randint(0, 3) for _ in range(rnd.randint(1, 4)))
    ]
    tld = rnd.choice(TLDS if odd else TLDS[:3])
    at = rnd.choice(["@", "@", "@", "@@", ""]) if odd else "@"
    return f"{local}{at}{'.'.join([*labels, tld])}"


def test_fast_path_agrees_with_email_validator() -> None:
    rnd = random.Random(20_240_601)
    accepted = 0
    for _ in range(20_000):
        value = _awkward(rnd)
        fast = addresses.normalize(value)
        if fast is not None:
            accepted += 1
            assert fast == _validator(value), value
    assert accepted > 1_000  # the corpus exercises the fast path, not only the fallback
