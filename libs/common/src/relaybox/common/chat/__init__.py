"""The messenger's rules the API, the consumer and the realtime gateway share."""
