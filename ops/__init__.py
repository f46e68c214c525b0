"""The platform: settings, NATS connection, provisioning, the local stack and the CLI."""
