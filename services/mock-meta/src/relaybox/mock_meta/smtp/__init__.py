"""The SMTP sink: an SMTP server that keeps what it receives, with failure switches."""
