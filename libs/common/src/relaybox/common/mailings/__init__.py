"""Bulk mailings: the rules the API (upload, reads, controls) and the consumer (parse, dispatch,
sweep) both apply, written once."""
