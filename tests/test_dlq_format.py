"""The DLQ entry's headers: one struct (`contracts.headers.DeadLetterHeaders`), written by
the worker and read by the operators' tools."""

from __future__ import annotations

from contracts import headers as h


def test_an_entry_reads_back_what_was_written() -> None:
    written = h.DeadLetterHeaders(
        reason="max_deliveries", deliveries=5, stream_seq=42, subject="alerts.in.a.b.3",
        at="2026-12-06T12:00:00+00:00", last_error="RetryableError: 503",
    )  # fmt: skip
    on_the_wire = written.to_headers({"traceparent": "00-ab-cd-01", "Nats-Msg-Id": "old"})
    assert on_the_wire[h.MSG_ID] == "ALERTS:42"  # one entry per ALERTS sequence
    assert on_the_wire["traceparent"] == "00-ab-cd-01"  # the alert's trace goes on
    assert h.DeadLetterHeaders.from_headers(on_the_wire) == written


def test_a_reason_is_one_bounded_line_and_no_error_is_no_header() -> None:
    written = h.DeadLetterHeaders(
        reason="terminated:\nbroker\r\nsaid no " + "x" * 1000, deliveries=1, stream_seq=1,
        subject="s", at="t",
    )  # fmt: skip
    on_the_wire = written.to_headers()
    assert "\n" not in on_the_wire[h.DLQ_REASON] and len(on_the_wire[h.DLQ_REASON]) == 500
    assert h.DLQ_LAST_ERROR not in on_the_wire


def test_a_damaged_entry_still_lists() -> None:
    read = h.DeadLetterHeaders.from_headers({h.DLQ_DELIVERIES: "many", h.DLQ_REASON: "x"})
    assert (read.reason, read.deliveries, read.stream_seq, read.last_error) == ("x", 0, 0, None)
    assert h.DeadLetterHeaders.from_headers(None).reason == ""
