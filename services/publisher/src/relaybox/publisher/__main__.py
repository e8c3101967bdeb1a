"""`python -m relaybox.publisher`: run one publisher replica."""

from __future__ import annotations

from relaybox.common import runtime
from relaybox.common.observability.logging import configure_logging
from relaybox.publisher.runner import serve
from relaybox.publisher.settings import PublisherSettings


def run() -> None:
    settings = PublisherSettings()
    configure_logging("publisher", settings.log)
    runtime.run(serve(settings))


if __name__ == "__main__":
    run()
