"""Bulk mailings: CSV uploads stored in chunks, their progress, recipients and controls."""
