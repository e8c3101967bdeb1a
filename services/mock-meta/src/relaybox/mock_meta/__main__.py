"""Entry point of `python -m relaybox.mock_meta`: settings, logging, uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from relaybox.common import runtime
from relaybox.common.observability.logging import configure_logging
from relaybox.mock_meta.app import create_app
from relaybox.mock_meta.settings import MockMetaSettings


def run() -> None:
    """Serve the mock providers until interrupted."""
    settings = MockMetaSettings()
    configure_logging("mock-meta", settings.log)
    _quiet_smtp_transcript()
    app = create_app(settings)
    runtime.freeze_startup_objects()
    uvicorn.run(app, host=settings.mock_meta.host, port=settings.mock_meta.port, log_config=None)


def _quiet_smtp_transcript() -> None:
    """aiosmtpd logs every SMTP command at INFO; keep only its warnings."""
    smtp_log = logging.getLogger("mail.log")
    smtp_log.setLevel(max(logging.WARNING, logging.getLogger().level))


if __name__ == "__main__":
    run()
