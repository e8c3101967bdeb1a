"""The outbox relay: publishes outbox rows to RabbitMQ, deletes them after the confirm."""
