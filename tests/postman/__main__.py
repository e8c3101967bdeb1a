"""`python -m tests.postman` (`make postman`): write docs/postman/relaybox.postman_collection.json
from the API's OpenAPI document (built in-process: no server, no database).

    python -m tests.postman            # regenerate the committed collection
    python -m tests.postman --check    # exit 1 when the committed one is stale
    python -m tests.postman --from-url http://127.0.0.1:3000/api/openapi.json  # a live API's
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import httpx

from tests.postman.collection import (
    COLLECTION_PATH,
    REGENERATE,
    build_collection,
    openapi_document,
    render,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.postman", description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    parser.add_argument("--from-url", default=None, help="read the document from a live API")
    parser.add_argument("--output", type=Path, default=COLLECTION_PATH)
    args = parser.parse_args(argv)
    document = (
        httpx.get(args.from_url, timeout=10).raise_for_status().json()
        if args.from_url
        else openapi_document()
    )
    text = render(build_collection(document))
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: run `{REGENERATE}`", file=sys.stderr)
            return 1
        print(f"{args.output} is current")
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    folders = build_collection(document)["item"]
    count = sum(len(folder["item"]) for folder in folders)
    print(f"wrote {args.output} ({count} requests in {len(folders)} folders)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
