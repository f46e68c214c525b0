"""Per-account execution: which broker, how big, which symbol, what is allowed.

Built once at start from `ops.platform.accounts` (the TOML file, credentials read from
the environment here and nowhere else); one broker adapter per account.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, assert_never

from ops.platform.accounts import (
    Account,
    AlpacaSettings,
    CcxtSettings,
    FixedNotional,
    FixedQuantity,
    HttpSettings,
    PaperSettings,
    PercentOfEquity,
)
from worker.brokers.paper import PaperBroker
from worker.errors import TerminalError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from contracts.messages import Alert
    from ops.platform.accounts import WorkerAccounts
    from worker.brokers.base import Broker


class Desk:
    """Every account's broker and rules; `for_alert` picks the ones an alert needs."""

    def __init__(self, accounts: dict[str, tuple[Account, Broker]], any_name: bool) -> None:
        self._accounts = accounts
        # Without an accounts file, any account name runs on the default (paper) account.
        self._any_name = any_name

    @classmethod
    def single(cls, broker: Broker, account: Account | None = None) -> Desk:
        """One broker for every account (the local stack without a file, and tests)."""
        return cls({"default": (account or Account(), broker)}, any_name=True)

    @classmethod
    def from_accounts(cls, accounts: WorkerAccounts, env: Mapping[str, str], paper_db: str) -> Desk:
        """One adapter per configured account, credentials from `env`."""
        built = {
            name: (account, make_broker(account, env, paper_db))
            for name, account in accounts.accounts.items()
        }
        return cls(built, any_name=accounts.any_name)

    def for_alert(self, alert: Alert) -> tuple[Account, Broker]:
        """The account rules and broker for this alert; TerminalError for an unknown account."""
        found = self._accounts.get(alert.account)
        if found is None and self._any_name:
            found = self._accounts["default"]
        if found is None:
            raise TerminalError(f"no account {alert.account!r} is configured")
        return found

    async def close(self) -> None:
        """Close every adapter."""
        for _, broker in self._accounts.values():
            await broker.close()


def make_broker(account: Account, env: Mapping[str, str], paper_db: str) -> Broker:
    """The adapter an account names, configured from its table and `env`."""
    match account.broker:
        case PaperSettings(db=db, equity=equity):
            return PaperBroker(Path(db or paper_db), equity=equity)
        case AlpacaSettings() as a:
            from worker.brokers.alpaca import AlpacaBroker, AlpacaConfig

            return AlpacaBroker(
                AlpacaConfig(
                    key_id=env[a.key_id_env], secret_key=env[a.secret_key_env],
                    base_url=a.base_url, time_in_force=a.time_in_force,
                )
            )  # fmt: skip
        case CcxtSettings() as c:
            from worker.brokers.ccxt_broker import CcxtBroker, CcxtConfig

            return CcxtBroker(
                CcxtConfig(
                    exchange=c.exchange, api_key=env[c.api_key_env], secret=env[c.secret_env],
                    password=env[c.password_env] if c.password_env else None,
                    sandbox=c.sandbox, api_url=c.api_url,
                    close_whole_balance=c.close_whole_balance,
                )
            )  # fmt: skip
        case HttpSettings() as h:
            from worker.brokers.http_forward import HttpForwardBroker, HttpForwardConfig

            return HttpForwardBroker(
                HttpForwardConfig(
                    url=h.url, secret=env[h.secret_env], lookup=h.lookup, timeout=h.timeout
                )
            )
        case unknown:
            assert_never(unknown)


async def size(
    alert: Alert, account: Account, broker: Broker, default_quantity: float | None
) -> float:
    """The order quantity: the alert's own, else the account's sizing rule, else the default.

    A quantity above the account's `max_order_size` is refused, never clipped.
    """
    quantity = alert.quantity
    if quantity is None and alert.side == "close":
        return 0.0  # close without a quantity: the whole position, whatever the sizing rule
    if quantity is None:
        quantity = await _by_rule(alert, account, broker) or default_quantity
    if quantity is None:
        raise TerminalError(
            "the alert has no quantity and its account no sizing rule or default quantity"
        )
    if account.max_order_size is not None and quantity > account.max_order_size:
        raise TerminalError(
            f"quantity {quantity:g} is above the account's max_order_size "
            f"{account.max_order_size:g}"
        )
    return quantity


async def _by_rule(alert: Alert, account: Account, broker: Broker) -> float | None:
    rule = account.sizing
    match rule:
        case None:
            return None
        case FixedQuantity(quantity=quantity):
            return quantity
        case FixedNotional(notional=notional):
            return notional / _price(alert, "fixed_notional")
        case PercentOfEquity(percent=percent):
            equity = await broker.equity()
            if equity is None:
                raise TerminalError(f"broker {broker.name} does not report equity")
            return equity * percent / 100 / _price(alert, "percent_of_equity")


def _price(alert: Alert, rule: str) -> float:
    price = alert.limit_price or alert.price
    if price is None:
        raise TerminalError(f"sizing rule {rule} needs the alert's price")
    return price


def check_symbol(alert: Alert, account: Account) -> None:
    """TerminalError when the account does not trade this symbol."""
    if account.allowed_symbols is not None and alert.symbol not in account.allowed_symbols:
        raise TerminalError(f"symbol {alert.symbol!r} is not allowed for account {alert.account!r}")
