"""The shared platform: settings, accounts, NATS connection, provisioning, telemetry,
logs, the health server. Imported by every process; imports nothing of the tools."""
