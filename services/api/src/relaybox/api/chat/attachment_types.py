"""What an attachment is: its type sniffed from its bytes, never taken from the client, and
how it is served (a download, or inline for a few image types).

The stored type is the sniffed one:
1. a signature the `filetype` library knows in the first 8 KiB: that type (`image/png`,
   `application/pdf`, `application/zip`, ...);
2. else text: the first 64 KiB decode as UTF-8 and hold no NUL: `text/plain; charset=utf-8`
   (HTML, SVG, XML and scripts included: stored as text, they are a download, never active
   content);
3. else `application/octet-stream`.

The file part's declared Content-Type must not contradict it (415 otherwise):
- no declaration, or a generic one (`application/octet-stream`): never contradicts;
- a signature type: the declaration names the same type, an alias of it (`image/jpg`) or one
  of its family (the zip containers: docx, xlsx, odt, epub, jar...; the OLE documents: doc,
  xls, ppt; audio and video containers);
- text: a textual declaration (`text/*`, JSON, XML, YAML, JavaScript, `+json`/`+xml`, SVG);
- anything else (stored as `application/octet-stream`): every declaration but a type that has
  a signature (an `image/png` whose bytes are no PNG).
"""

from __future__ import annotations

import codecs
import functools
from urllib.parse import quote

import filetype  # type: ignore[import-untyped]

from relaybox.api.uploads import UnsupportedMediaTypeError

SIGNATURE_BYTES = 8192  # what `filetype` reads
TEXT_SAMPLE_BYTES = 64 * 1024
HEAD_BYTES = max(SIGNATURE_BYTES, TEXT_SAMPLE_BYTES)
TEXT = "text/plain; charset=utf-8"
BINARY = "application/octet-stream"
# Served inline (still with nosniff and the sandbox CSP): images a browser only draws.
INLINE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
GENERIC = frozenset({"", BINARY, "binary/octet-stream", "application/unknown"})
ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "image/x-png": "image/png",
    "image/x-ms-bmp": "image/bmp",
    "image/vnd.microsoft.icon": "image/x-icon",
    "image/heif": "image/heic",
    "application/x-pdf": "application/pdf",
    "application/x-zip-compressed": "application/zip",
    "application/x-zip": "application/zip",
    "application/x-gzip": "application/gzip",
    "application/x-bzip": "application/x-bzip2",
    "application/vnd.rar": "application/x-rar-compressed",
    "application/x-rar": "application/x-rar-compressed",
    "application/vnd.sqlite3": "application/x-sqlite3",
    "text/rtf": "application/rtf",
    "font/woff": "application/font-woff",
    "font/woff2": "application/font-woff",
    "font/ttf": "application/font-sfnt",
    "font/otf": "application/font-sfnt",
    "font/sfnt": "application/font-sfnt",
}
ZIP_FAMILY = frozenset(
    {
        "application/zip",
        "application/epub+zip",
        "application/java-archive",
        "application/vnd.android.package-archive",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "application/vnd.oasis.opendocument.text",
        "application/vnd.oasis.opendocument.spreadsheet",
        "application/vnd.oasis.opendocument.presentation",
    }
)
OLE_FAMILY = frozenset(
    {
        "application/msword",
        "application/vnd.ms-excel",
        "application/vnd.ms-powerpoint",
        "application/vnd.ms-outlook",
        "application/x-msi",
    }
)
TEXTUAL = frozenset(
    {
        "application/json",
        "application/xml",
        "application/javascript",
        "application/x-javascript",
        "application/ecmascript",
        "application/yaml",
        "application/x-yaml",
        "application/toml",
        "application/sql",
        "application/x-sh",
        "application/x-ndjson",
        "application/csv",
        "application/x-subrip",
    }
)


def normalised(media_type: str | None) -> str:
    """`media_type` without parameters, lower case, aliases resolved ('' for none)."""
    bare = (media_type or "").split(";", 1)[0].strip().lower()
    return ALIASES.get(bare, bare)


def sniff(head: bytes, *, complete: bool) -> str:
    """The stored type of a file whose first bytes are `head` (`complete`: the whole file)."""
    kind = filetype.guess(head[:SIGNATURE_BYTES])
    if kind is not None:
        return str(kind.mime)
    return TEXT if _is_text(head[:TEXT_SAMPLE_BYTES], complete=complete) else BINARY


def check_declared(declared: str | None, sniffed: str) -> None:
    """415 when the part's declared Content-Type contradicts the sniffed type."""
    claim = normalised(declared)
    if claim in GENERIC or _agrees(claim, normalised(sniffed)):
        return
    raise UnsupportedMediaTypeError(
        f"the file part's Content-Type says {claim or declared!r} but its bytes are "
        f"{_described(sniffed)}; send the file's real type, or application/octet-stream",
        field="file",
        declaredType=declared,
        detectedType=sniffed,
    )


def content_disposition(filename: str, content_type: str) -> str:
    """`attachment` (or `inline` for `INLINE_TYPES`) with the name as RFC 6266 states it: an
    ASCII fallback and the UTF-8 name."""
    kind = "inline" if normalised(content_type) in INLINE_TYPES else "attachment"
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in filename)
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def response_media_type(content_type: str) -> str:
    """The stored type as Litestar takes it: it appends `; charset=utf-8` to a text type itself
    (the only text stored is UTF-8)."""
    return content_type.split(";", 1)[0] if content_type.startswith("text/") else content_type


def _agrees(claim: str, sniffed: str) -> bool:
    if sniffed == BINARY:
        return claim not in _signature_types()
    if sniffed == "text/plain":
        return _textual(claim)
    return _family(claim) == _family(sniffed)


def _family(media_type: str) -> str:
    top = media_type.split("/", 1)[0]
    if top in ("audio", "video"):
        return "media"  # one container holds either
    if media_type in ZIP_FAMILY:
        return "zip"
    if media_type in OLE_FAMILY:
        return "ole"
    if media_type == "image/apng":
        return "image/png"
    return media_type


def _textual(media_type: str) -> bool:
    return (
        media_type.startswith("text/")
        or media_type in TEXTUAL
        or media_type.endswith(("+json", "+xml"))
    )


@functools.cache
def _signature_types() -> frozenset[str]:
    """Every type `filetype` recognises by its bytes (and its family)."""
    known = {str(kind.mime) for kind in filetype.types}
    return frozenset(known | ZIP_FAMILY | OLE_FAMILY)


def _is_text(sample: bytes, *, complete: bool) -> bool:
    if b"\x00" in sample:
        return False
    decoder = codecs.getincrementaldecoder("utf-8")()  # a character cut by the sample's end
    try:
        decoder.decode(sample, final=complete)
    except UnicodeDecodeError:
        return False
    return True


def _described(sniffed: str) -> str:
    if sniffed == BINARY:
        return "of no known type"
    return "text" if sniffed == TEXT else sniffed
