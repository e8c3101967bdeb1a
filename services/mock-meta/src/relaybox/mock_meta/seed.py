"""`python -m relaybox.mock_meta.seed`: demo conversations, sent as real signed webhooks.

Asks the running mock-meta (`make run`) to simulate customers writing in, so every demo row goes
through the gateway's real webhook path (signature, de-duplication, ordering).
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta

import httpx

CUSTOMERS = [
    ("whatsapp", "+15550100001", ["Hi! Is my order #1042 shipped?", "It was due yesterday."]),
    ("whatsapp", "+15550100002", ["Can I change my delivery address?"]),
    ("instagram", "ig_user_marta", ["Love the new collection 😍", "Do you ship to Spain?"]),
    ("instagram", "ig_user_kenji", ["Is the blue jacket back in stock?"]),
    ("whatsapp", "+15550100003", ["Refund request for order #998", "Thanks for the quick reply!"]),
]


def seed(base_url: str) -> int:
    """Post every demo message (one duplicated, one out of order); the number of events."""
    start = datetime.now(UTC) - timedelta(hours=2)
    posted = 0
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for c_index, (channel, sender, texts) in enumerate(CUSTOMERS):
            for m_index, text in enumerate(texts):
                at = start + timedelta(minutes=10 * c_index + m_index)
                body = {
                    "channel": channel,
                    "from": sender,
                    "text": text,
                    "timestamp": at.isoformat().replace("+00:00", "Z"),
                    "eventId": f"seed-{c_index}-{m_index}",
                    "duplicate": c_index == 0 and m_index == 0,
                    "outOfOrder": c_index == 2 and m_index == 1,
                    "wait": True,
                }
                response = client.post("/simulate/inbound", json=body)
                response.raise_for_status()
                if not response.json().get("success"):
                    raise RuntimeError(f"the gateway refused {body['eventId']}: is the API up?")
                posted += 1
    return posted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m relaybox.mock_meta.seed")
    parser.add_argument("--mock-meta", default="http://127.0.0.1:4000", help="mock-meta URL")
    args = parser.parse_args(argv)
    try:
        count = seed(args.mock_meta)
    except (httpx.HTTPError, RuntimeError) as exc:
        print(f"error: {exc} (start everything with `make run` first)", file=sys.stderr)
        return 2
    print(f"seeded {count} inbound messages in {len(CUSTOMERS)} conversations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
