"""The wire: every message, subject, header and stream spec shared by ingress and worker.

Imports only msgspec, the OpenTelemetry API and the standard library.
"""
