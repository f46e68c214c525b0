"""Broker adapters: one module each, one small protocol (`worker.brokers.base`)."""
