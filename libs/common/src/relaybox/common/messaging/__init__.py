"""RabbitMQ topology and message conventions shared by publisher and consumers."""
