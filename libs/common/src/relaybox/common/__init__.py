"""Shared building blocks of every relaybox service: settings, database, outbox, messaging."""
