"""Providers: one small class per external service behind one interface per channel."""
