"""Accounts: one TOML file (`ALERTBRIDGE_CONFIG`, default `./alertbridge.toml`).

Credentials are never in the file, only the names of the environment variables
that hold them. The file is validated at start (and by `alertbridge config check`)
with errors that name the account and the key. Without a file there is one
account, `default`, on the paper broker, sized by `ALERTBRIDGE_DEFAULT_QUANTITY`,
and any account name in an alert is accepted (the local stack's behaviour).

    [accounts.default]
    broker = "paper"
    sizing = { kind = "fixed_quantity", quantity = 1 }
    max_order_size = 100
    max_alert_age = 60
    allowed_symbols = ["NASDAQ:AAPL", "BINANCE:BTCUSDT"]
    webhook_secrets_env = ["ALERTBRIDGE_SECRET_DEFAULT"]
    hmac_secrets_env = ["ALERTBRIDGE_HMAC_DEFAULT"]     # optional: keys for signed alerts
    [accounts.default.symbols]
    "BINANCE:BTCUSDT" = "BTC/USDT"

    [accounts.crypto]
    broker = "ccxt"
    ccxt = { exchange = "binance", api_key_env = "BINANCE_KEY", secret_env = "BINANCE_SECRET", sandbox = true }
"""  # noqa: E501

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

import msgspec

from ops.settings import MIN_HMAC_KEY_LENGTH, MIN_SECRET_LENGTH, Secret, SettingsError

if TYPE_CHECKING:
    from collections.abc import Mapping

CONFIG_VAR: Final = "ALERTBRIDGE_CONFIG"
DEFAULT_FILE: Final = "alertbridge.toml"

Positive = Annotated[float, msgspec.Meta(gt=0)]
EnvName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class _Strict(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class FixedQuantity(_Strict, frozen=True, tag="fixed_quantity", tag_field="kind"):
    """Every order of this size (units, shares, contracts)."""

    quantity: Positive


class FixedNotional(_Strict, frozen=True, tag="fixed_notional", tag_field="kind"):
    """Orders worth this much in the quote currency (needs the alert's price)."""

    notional: Positive


class PercentOfEquity(_Strict, frozen=True, tag="percent_of_equity", tag_field="kind"):
    """Orders worth this share of the account's equity (brokers that report equity)."""

    percent: Annotated[float, msgspec.Meta(gt=0, le=100)]


Sizing = FixedQuantity | FixedNotional | PercentOfEquity


class PaperSettings(_Strict, frozen=True):
    """The embedded paper book."""

    db: str | None = None  # default: ALERTBRIDGE_PAPER_DB
    equity: Positive = 100_000.0


class AlpacaSettings(_Strict, frozen=True):
    """Alpaca (stocks, crypto); paper unless `base_url` says live."""

    key_id_env: EnvName
    secret_key_env: EnvName
    base_url: str = "https://paper-api.alpaca.markets"
    time_in_force: Literal["day", "gtc", "ioc", "fok", "opg", "cls"] = "day"


class CcxtSettings(_Strict, frozen=True):
    """A crypto exchange through ccxt."""

    exchange: str
    api_key_env: EnvName
    secret_env: EnvName
    password_env: EnvName | None = None
    sandbox: bool = False
    api_url: str | None = None  # override the exchange's REST base URL (tests, proxies)


class HttpSettings(_Strict, frozen=True):
    """A signed HTTP forward to the user's own service."""

    url: str
    secret_env: EnvName
    lookup: bool = False
    timeout: Positive = 10.0


class Account(_Strict, frozen=True):
    """One trading account and how alerts for it become orders."""

    broker: Literal["paper", "alpaca", "ccxt", "http"] = "paper"
    paper: PaperSettings | None = None
    alpaca: AlpacaSettings | None = None
    ccxt: CcxtSettings | None = None
    http: HttpSettings | None = None
    webhook_secrets_env: tuple[EnvName, ...] = ()
    # HMAC keys for senders that sign (X-Signature); with hmac_required, only signed
    # alerts are admitted for this account.
    hmac_secrets_env: tuple[EnvName, ...] = ()
    hmac_required: bool = False
    sizing: Sizing | None = None
    symbols: dict[str, str] = msgspec.field(default_factory=dict)
    allowed_symbols: tuple[str, ...] | None = None
    max_alert_age: Annotated[float, msgspec.Meta(ge=0)] | None = None
    max_order_size: Positive | None = None

    def broker_symbol(self, symbol: str) -> str:
        """The broker's name for a TradingView symbol (the map, else unchanged)."""
        return self.symbols.get(symbol, symbol)


class Accounts(msgspec.Struct, frozen=True):
    """The accounts in force, and whether they came from a file."""

    accounts: dict[str, Account]
    from_file: Path | None
    secrets: dict[str, tuple[Secret, ...]]
    hmac_secrets: dict[str, tuple[Secret, ...]] = msgspec.field(default_factory=dict)

    def get(self, name: str) -> Account | None:
        """The account, or None when unknown. Without a file every name is a paper account."""
        if self.from_file is None:
            return self.accounts["default"]
        return self.accounts.get(name)


def config_path(env: Mapping[str, str]) -> Path | None:
    """The accounts file in force: `ALERTBRIDGE_CONFIG`, else ./alertbridge.toml if present."""
    if explicit := env.get(CONFIG_VAR, "").strip():
        return Path(explicit)
    default = Path(DEFAULT_FILE)
    return default if default.exists() else None


def load_accounts(env: Mapping[str, str] = os.environ) -> Accounts:
    """Read and validate the accounts; SettingsError names the account and the key."""
    path = config_path(env)
    if path is None:
        return Accounts(accounts={"default": Account()}, from_file=None, secrets={})
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SettingsError(f"{CONFIG_VAR}={str(path)!r} cannot be read: {exc}") from None
    try:
        tables = msgspec.toml.decode(raw, type=dict[str, dict[str, dict[str, Any]]])
    except msgspec.ValidationError:
        raise SettingsError(f"{path}: the file holds only [accounts.<name>] tables") from None
    except msgspec.DecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML: {exc}") from None
    if set(tables) != {"accounts"} or not tables["accounts"]:
        raise SettingsError(f"{path}: the file holds only [accounts.<name>] tables (one at least)")
    accounts, secrets, hmac_secrets = {}, {}, {}
    for name, table in tables["accounts"].items():
        try:
            account = msgspec.convert(table, Account)
        except msgspec.ValidationError as exc:
            raise SettingsError(f"{path}: account {name!r}: {_where(str(exc))}") from None
        _check(path, name, account, env)
        accounts[name] = account
        secrets[name] = tuple(Secret(env[var]) for var in account.webhook_secrets_env)
        hmac_secrets[name] = tuple(Secret(env[var]) for var in account.hmac_secrets_env)
    return Accounts(accounts=accounts, from_file=path, secrets=secrets, hmac_secrets=hmac_secrets)


def _where(message: str) -> str:
    """msgspec says "… - at `$.ccxt.exchange`"; people say (key 'ccxt.exchange')."""
    head, sep, at = message.rpartition(" - at `$")
    if not sep:
        return message
    key = at.rstrip("`").lstrip(".")
    return head + (f" (key {key!r})" if key else "")


def _check(path: Path, name: str, account: Account, env: Mapping[str, str]) -> None:
    where = f"{path}: account {name!r}"
    section = getattr(account, account.broker)
    if account.broker != "paper" and section is None:
        raise SettingsError(f"{where}: broker {account.broker!r} needs a [{account.broker}] table")
    needed = [("webhook_secrets_env", var) for var in account.webhook_secrets_env]
    needed += [("hmac_secrets_env", var) for var in account.hmac_secrets_env]
    if section is not None:
        needed += [
            (key, value)
            for key, value in msgspec.structs.asdict(section).items()
            if key.endswith("_env") and value
        ]
    for key, var in needed:
        if not env.get(var):
            raise SettingsError(f"{where}: {key} names {var}, which is not set")
    for var in account.webhook_secrets_env:
        if len(env[var]) < MIN_SECRET_LENGTH:
            raise SettingsError(
                f"{where}: the secret in {var} is shorter than {MIN_SECRET_LENGTH} characters"
            )
    for var in account.hmac_secrets_env:
        if len(env[var]) < MIN_HMAC_KEY_LENGTH:
            raise SettingsError(
                f"{where}: the HMAC key in {var} is shorter than {MIN_HMAC_KEY_LENGTH} characters"
            )
