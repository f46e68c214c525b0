"""`python -m ingress.check`: what the webhook would make of one body, without serving it.

`alertbridge template --check` runs this as a process (the operator's tools never import
the ingress: tests/test_layers.py), so a template is judged by the parser that will
receive it, not by a copy of its rules. The body comes on stdin; one JSON object goes
to stdout: `secret` (where a secret was found: "body" or null), then either `alert`
(every field the alert got, as stored) or `errors` (field by field, as a 422 says them).
Exit 0 when the body becomes an alert, 1 when it does not.

The steps are the webhook's own, in its order (ingress.app): decode the JSON object,
take the secret out, normalize the fields, and, when an accounts file is configured,
refuse an account it does not name (the file's structure is read, not the variables it
names). Nothing is published and no secret is compared.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from typing import Any

import msgspec

from ingress.parse import FieldError, InvalidAlertError, decode_body, pop_secret, to_alert
from ops.platform.accounts import read_accounts
from ops.platform.settings import SettingsError


class Verdict(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What the webhook would answer, field by field."""

    secret: str | None = None  # "body" when one of parse.SECRET_KEYS held a string
    alert: dict[str, Any] | None = None
    errors: list[FieldError] = msgspec.field(default_factory=list)
    note: str | None = None  # what was not checked, and why


_encoder = msgspec.json.Encoder()


def judge(body: bytes, env: dict[str, str]) -> Verdict:
    """The webhook's verdict on `body` (the secret itself is never part of it)."""
    try:
        payload = decode_body(body)
    except InvalidAlertError as exc:
        return Verdict(errors=exc.errors)
    secret = "body" if pop_secret(payload) is not None else None
    try:
        alert = to_alert(payload, received_at=datetime.now(UTC))
    except InvalidAlertError as exc:
        return Verdict(secret=secret, errors=exc.errors)
    fields = msgspec.to_builtins(alert)
    for internal in ("type", "received_at", "replay", "replayed_at"):
        fields.pop(internal, None)
    try:
        accounts = read_accounts(env)
    except SettingsError as exc:
        note = f"the account was not checked: the accounts file is not usable here ({exc})"
        return Verdict(secret=secret, alert=fields, note=note)
    if not accounts.any_name and alert.account not in accounts.accounts:
        unknown = [FieldError("account", "no such account")]
        return Verdict(secret=secret, errors=unknown)
    return Verdict(secret=secret, alert=fields)


def main() -> int:
    """Judge stdin's body; exit 0 when it becomes an alert."""
    verdict = judge(sys.stdin.buffer.read(), dict(os.environ))
    sys.stdout.buffer.write(_encoder.encode(verdict) + b"\n")
    return 0 if verdict.alert is not None else 1


if __name__ == "__main__":
    sys.exit(main())
