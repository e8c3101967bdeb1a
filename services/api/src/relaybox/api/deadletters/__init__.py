"""The dead-letter office for operators: list, inspect, replay and discard dead letters."""
