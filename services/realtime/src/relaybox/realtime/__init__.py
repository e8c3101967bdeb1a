"""The realtime service: chat clients' WebSockets, fed by RabbitMQ, resumed from PostgreSQL."""
