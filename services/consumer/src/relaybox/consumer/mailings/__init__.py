"""Bulk mailings on the consumer side: stream an uploaded CSV into recipients and errors."""
