"""Entry point of `python -m relaybox.mock_meta`: settings, logging, uvicorn."""

from __future__ import annotations

import uvicorn

from relaybox.common.observability.logging import configure_logging
from relaybox.mock_meta.app import create_app
from relaybox.mock_meta.settings import MockMetaSettings


def run() -> None:
    """Serve the mock providers until interrupted."""
    settings = MockMetaSettings()
    configure_logging("mock-meta", settings.log)
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None)


if __name__ == "__main__":
    run()
