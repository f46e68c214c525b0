"""The webhook receiver: authenticate, parse, validate, publish, answer fast and truthfully."""
