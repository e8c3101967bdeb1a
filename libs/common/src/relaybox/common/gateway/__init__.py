"""The Meta-like customer inbox: the rules the API (webhooks) and the consumer (sends) share."""
