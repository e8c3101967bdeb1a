"""The REST API: writes domain rows and outbox rows in one transaction; never talks to RabbitMQ."""
