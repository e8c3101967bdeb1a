"""`python -m relaybox.publisher`: run one publisher replica."""

from __future__ import annotations

import asyncio

from relaybox.common.observability.logging import configure_logging
from relaybox.publisher.service import serve
from relaybox.publisher.settings import PublisherSettings


def run() -> None:
    settings = PublisherSettings()
    configure_logging("publisher", settings.log)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    run()
