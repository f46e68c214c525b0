"""What the webhook-body tests share (tests/test_parse_samples.py, tests/test_parse_fields.py):
the real TradingView samples, the ingress's decode → secret → normalize, and reading the
field errors of a refused body."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from contracts.messages import Alert
from ingress.parse import FieldError, InvalidAlertError, decode_body, pop_secret, to_alert

SAMPLES = Path(__file__).parent / "samples"
RECEIVED = datetime(2025, 1, 15, 14, 30, 2, tzinfo=UTC)


def _sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def _parse(body: bytes) -> tuple[Alert, str | None]:
    """What the ingress does: decode, remove the secret, normalize."""
    payload = decode_body(body)
    secret = pop_secret(payload)
    return to_alert(payload, received_at=RECEIVED), secret


def _alert(**fields: Any) -> Alert:
    return to_alert(dict(fields), received_at=RECEIVED)


def _errors(**fields: Any) -> list[FieldError]:
    with pytest.raises(InvalidAlertError) as info:
        to_alert(dict(fields), received_at=RECEIVED)
    assert info.value.errors, "an InvalidAlertError must say why"
    return info.value.errors


def _fields(errors: list[FieldError]) -> list[str]:
    return [e.field for e in errors]


def _reason(errors: list[FieldError], field: str) -> str:
    reasons = [e.reason for e in errors if e.field == field]
    assert reasons, f"no error on {field!r}: {errors}"
    return reasons[0]
