"""The order executor: consume alerts per partition, call the broker, record events."""
