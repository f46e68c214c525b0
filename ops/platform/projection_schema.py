"""The read models' tables (ops.platform.projections says what each holds)."""

from __future__ import annotations

from typing import Final

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS applied (
    stream TEXT PRIMARY KEY, seq INTEGER NOT NULL,
    last INTEGER NOT NULL DEFAULT 0, checked INTEGER
);
CREATE TABLE IF NOT EXISTS alerts (
    account TEXT NOT NULL, alert_id TEXT NOT NULL, replay INTEGER NOT NULL DEFAULT 0,
    symbol TEXT NOT NULL, side TEXT, quantity REAL, order_type TEXT,
    received INTEGER NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT, trace_id TEXT, client_order_id TEXT, broker_order_id TEXT,
    fill_price REAL, alert_seq INTEGER, dlq_seq INTEGER, updated INTEGER NOT NULL,
    PRIMARY KEY (account, alert_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS alerts_received ON alerts (received, account, alert_id);
CREATE INDEX IF NOT EXISTS alerts_symbol ON alerts (symbol, received);
CREATE INDEX IF NOT EXISTS alerts_status ON alerts (status, received);
CREATE INDEX IF NOT EXISTS alerts_account ON alerts (account, received);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY, account TEXT NOT NULL, alert_id TEXT NOT NULL,
    replay INTEGER NOT NULL, kind TEXT NOT NULL, at INTEGER NOT NULL, body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_alert ON events (account, alert_id, seq);
CREATE TABLE IF NOT EXISTS orders (
    seq INTEGER PRIMARY KEY, account TEXT NOT NULL, alert_id TEXT NOT NULL,
    replay INTEGER NOT NULL, symbol TEXT NOT NULL, side TEXT NOT NULL,
    quantity REAL NOT NULL, order_type TEXT NOT NULL, client_order_id TEXT NOT NULL,
    broker TEXT NOT NULL, broker_order_id TEXT NOT NULL, status TEXT NOT NULL,
    fill_price REAL, at INTEGER NOT NULL, UNIQUE (account, client_order_id)
);
CREATE INDEX IF NOT EXISTS orders_account ON orders (account, seq);
CREATE INDEX IF NOT EXISTS orders_symbol ON orders (symbol, seq);
CREATE INDEX IF NOT EXISTS orders_at ON orders (at);
CREATE INDEX IF NOT EXISTS orders_alert ON orders (alert_id, seq);
CREATE TABLE IF NOT EXISTS positions (
    account TEXT NOT NULL, symbol TEXT NOT NULL, quantity REAL NOT NULL,
    avg_price REAL NOT NULL, realized_pnl REAL NOT NULL, fills INTEGER NOT NULL,
    unpriced INTEGER NOT NULL DEFAULT 0, updated INTEGER NOT NULL,
    PRIMARY KEY (account, symbol)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letters (
    dlq_seq INTEGER PRIMARY KEY, account TEXT NOT NULL DEFAULT '',
    alert_id TEXT NOT NULL DEFAULT '', symbol TEXT NOT NULL DEFAULT '', side TEXT,
    quantity REAL, reason TEXT NOT NULL DEFAULT '', deliveries INTEGER NOT NULL DEFAULT 0,
    last_error TEXT, alert_seq INTEGER NOT NULL DEFAULT 0, at INTEGER,
    replayed_round INTEGER
);
CREATE INDEX IF NOT EXISTS dead_letters_account ON dead_letters (account, dlq_seq);
"""
