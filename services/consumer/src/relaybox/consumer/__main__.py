"""`python -m relaybox.consumer`: run one consumer replica."""

from __future__ import annotations

from relaybox.common import runtime
from relaybox.common.observability.logging import configure_logging
from relaybox.consumer.runner import serve
from relaybox.consumer.settings import ConsumerSettings


def run() -> None:
    settings = ConsumerSettings()
    configure_logging("consumer", settings.log)
    runtime.run(serve(settings))


if __name__ == "__main__":
    run()
