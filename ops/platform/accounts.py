"""Accounts: one TOML file (`ALERTBRIDGE_CONFIG`, default `./alertbridge.toml`).

Credentials are never in the file, only the names of the environment variables
that hold them. The file is validated at start (and by `alertbridge config check`)
with errors that name the account and the key. Each process reads its own view and
checks only the variables it uses: the ingress the webhook secrets and HMAC keys
(`ingress_accounts`), the worker the brokers' credentials (`worker_accounts`). Without a file there is one
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
    broker = "ccxt"       # one of paper, alpaca, ccxt, http, with a table of that name
    ccxt = { exchange = "binance", api_key_env = "BINANCE_KEY", secret_env = "BINANCE_SECRET", sandbox = true }
"""  # noqa: E501

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

import msgspec

from ops.platform.limits import Limits
from ops.platform.settings import MIN_HMAC_KEY_LENGTH, MIN_SECRET_LENGTH, Secret, SettingsError

if TYPE_CHECKING:
    from collections.abc import Mapping

CONFIG_VAR: Final = "ALERTBRIDGE_CONFIG"
NOTIFY_TABLE: Final = "notify"  # besides [accounts.<name>]: where notifications go
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


class _BrokerSettings(_Strict, frozen=True, tag_field="kind"):
    """Which broker an account trades through (the account's `broker`, with its table)."""

    @property
    def kind(self) -> str:
        """The broker's name in the file (`paper`, `alpaca`, ...)."""
        return str(self.__struct_config__.tag)

    def env_vars(self) -> list[tuple[str, str]]:
        """(key, variable) of every credential this broker reads from the environment."""
        return [
            (key, value)
            for key, value in msgspec.structs.asdict(self).items()
            if key.endswith("_env") and value
        ]


class PaperSettings(_BrokerSettings, frozen=True, tag="paper"):
    """The embedded paper book."""

    db: str | None = None  # default: ALERTBRIDGE_PAPER_DB
    equity: Positive = 100_000.0


class AlpacaSettings(_BrokerSettings, frozen=True, tag="alpaca"):
    """Alpaca (stocks, crypto); paper unless `base_url` says live."""

    key_id_env: EnvName
    secret_key_env: EnvName
    base_url: str = "https://paper-api.alpaca.markets"
    time_in_force: Literal["day", "gtc", "ioc", "fok", "opg", "cls"] = "day"


class CcxtSettings(_BrokerSettings, frozen=True, tag="ccxt"):
    """A crypto exchange through ccxt."""

    exchange: str
    api_key_env: EnvName
    secret_env: EnvName
    password_env: EnvName | None = None
    sandbox: bool = False
    api_url: str | None = None  # override the exchange's REST base URL (tests, proxies)
    # A close sells the whole free base balance, coins bought outside alertbridge too.
    close_whole_balance: bool = False


class HttpSettings(_BrokerSettings, frozen=True, tag="http"):
    """A signed HTTP forward to the user's own service."""

    url: str
    secret_env: EnvName
    lookup: bool = False
    timeout: Positive = 10.0


# A tagged union: adapter construction is a `match`, and a broker name nobody knows is a
# start-up error, never a quiet fall-through to paper.
BrokerSettings = PaperSettings | AlpacaSettings | CcxtSettings | HttpSettings
BROKERS: Final = ("paper", "alpaca", "ccxt", "http")


class Account(_Strict, frozen=True):
    """One trading account and how alerts for it become orders."""

    broker: BrokerSettings = PaperSettings()
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
    # Where this account's notifications go besides the global targets ([notify]): each
    # variable holds one Apprise URL (ops.platform.notify_settings).
    notify_urls_env: tuple[EnvName, ...] = ()
    # Risk limits and the circuit breaker (ops.platform.limits, docs/risk.md).
    limits: Limits | None = None

    def broker_symbol(self, symbol: str) -> str:
        """The broker's name for a TradingView symbol (the map, else unchanged)."""
        return self.symbols.get(symbol, symbol)


class AccountsFile(msgspec.Struct, frozen=True):
    """The accounts file as written: structure checked, no environment read yet."""

    accounts: dict[str, Account]
    path: Path | None  # None: no file, one paper account `default` for any name

    @property
    def any_name(self) -> bool:
        """Without a file, any account name in an alert runs on the default account."""
        return self.path is None


class IngressAccounts(msgspec.Struct, frozen=True):
    """What the ingress needs of the accounts: who exists and their senders' secrets."""

    names: frozenset[str]
    any_name: bool
    secrets: dict[str, tuple[Secret, ...]] = msgspec.field(default_factory=dict)
    hmac_secrets: dict[str, tuple[Secret, ...]] = msgspec.field(default_factory=dict)
    hmac_required: frozenset[str] = frozenset()

    def known(self, name: str) -> bool:
        """Whether alerts for `name` can be executed at all."""
        return self.any_name or name in self.names


class WorkerAccounts(msgspec.Struct, frozen=True):
    """What the worker needs: each account's broker and rules (credentials checked)."""

    accounts: dict[str, Account]
    any_name: bool


def config_path(env: Mapping[str, str]) -> Path | None:
    """The accounts file in force: `ALERTBRIDGE_CONFIG`, else ./alertbridge.toml if present."""
    if explicit := env.get(CONFIG_VAR, "").strip():
        return Path(explicit)
    default = Path(DEFAULT_FILE)
    return default if default.exists() else None


def read_accounts(env: Mapping[str, str] = os.environ) -> AccountsFile:
    """Read and validate the file's structure; SettingsError names the account and key."""
    path = config_path(env)
    if path is None:
        return AccountsFile(accounts={"default": Account()}, path=None)
    tables = _tables(path)
    if problems := _account_problems(path, tables, env, variables=False):
        raise SettingsError(problems[0])
    accounts = {n: _account(f"{path}: account {n!r}", t) for n, t in tables.items()}
    return AccountsFile(accounts=accounts, path=path)


def every_problem(env: Mapping[str, str] = os.environ) -> list[str]:
    """Every error in the accounts file and in the variables it names, not only the first
    (`alertbridge config check`); empty when the ingress and the worker would start."""
    path = config_path(env)
    if path is None:
        return []
    try:
        tables = _tables(path)
    except SettingsError as exc:  # the file itself: nothing further can be read
        return [str(exc)]
    return _account_problems(path, tables, env, variables=True)


def _tables(path: Path) -> dict[str, dict[str, Any]]:
    """The `[accounts.<name>]` tables of the file, by name."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SettingsError(f"{CONFIG_VAR}={str(path)!r} cannot be read: {exc}") from None
    try:
        top = msgspec.toml.decode(raw, type=dict[str, dict[str, Any]])
        top.pop(NOTIFY_TABLE, None)  # ops.platform.notify_settings reads it
        tables = msgspec.convert(top, dict[str, dict[str, dict[str, Any]]])
    except msgspec.ValidationError:
        raise SettingsError(f"{path}: the file holds only [accounts.<name>] tables") from None
    except msgspec.DecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML: {exc}") from None
    if set(tables) != {"accounts"} or not tables["accounts"]:
        raise SettingsError(f"{path}: the file holds only [accounts.<name>] tables (one at least)")
    return tables["accounts"]


def _account(where: str, table: dict[str, Any]) -> Account:
    table = _with_broker(where, table)
    try:
        return msgspec.convert(table, Account)
    except msgspec.ValidationError as exc:
        # The file's `[ccxt]` table is the struct's `broker`: name it as written.
        at = _where(str(exc)).replace("(key 'broker", f"(key '{table['broker']['kind']}")
        raise SettingsError(f"{where}: {at}") from None


def _account_problems(
    path: Path, tables: dict[str, dict[str, Any]], env: Mapping[str, str], *, variables: bool
) -> list[str]:
    """What is wrong with each account, in the file's order (`variables`: with the
    variables it names, as the ingress and the worker check them)."""
    found = []
    for name, table in tables.items():
        where = f"{path}: account {name!r}"
        try:
            account = _account(where, table)
        except SettingsError as exc:
            found.append(str(exc))
            continue
        if variables:
            found += _variable_problems(where, account, env)
    return found


def _variable_problems(where: str, account: Account, env: Mapping[str, str]) -> list[str]:
    found = []
    for key, names, minimum, kind in (
        ("webhook_secrets_env", account.webhook_secrets_env, MIN_SECRET_LENGTH, "secret"),
        ("hmac_secrets_env", account.hmac_secrets_env, MIN_HMAC_KEY_LENGTH, "HMAC key"),
    ):
        for var in names:
            try:
                _secrets(where, key, (var,), minimum, kind, env)
            except SettingsError as exc:
                found.append(str(exc))
    found += [
        f"{where}: {key} names {var}, which is not set"
        for key, var in account.broker.env_vars()
        if not env.get(var)
    ]
    return found


def _with_broker(where: str, table: dict[str, Any]) -> dict[str, Any]:
    """The file says `broker = "ccxt"` and a `[ccxt]` table; the struct holds one tagged
    value. A table for another broker than the one named is refused, not ignored."""
    found = dict(table)
    name = found.pop("broker", "paper")
    if name not in BROKERS:
        raise SettingsError(
            f"{where}: broker {name!r} is unknown: give one of {', '.join(BROKERS)}"
        )
    sections = {key: found.pop(key) for key in BROKERS if key in found}
    if name != "paper" and name not in sections:
        raise SettingsError(f"{where}: broker {name!r} needs a [{name}] table")
    if stray := sorted(set(sections) - {name}):
        raise SettingsError(f"{where}: a [{stray[0]}] table, but the broker is {name!r}")
    section = sections.get(name, {})
    if not isinstance(section, dict):
        raise SettingsError(f"{where}: [{name}] must be a table")
    found["broker"] = {**section, "kind": name}
    return found


def ingress_accounts(env: Mapping[str, str] = os.environ) -> IngressAccounts:
    """The ingress's view: only the webhook secrets and HMAC keys are read (and must be
    set); a broker's credentials are none of its business."""
    file = read_accounts(env)
    secrets, hmac_secrets = {}, {}
    for name, account in file.accounts.items():
        where = f"{file.path}: account {name!r}"
        secrets[name] = _secrets(where, "webhook_secrets_env", account.webhook_secrets_env,
                                 MIN_SECRET_LENGTH, "secret", env)  # fmt: skip
        hmac_secrets[name] = _secrets(where, "hmac_secrets_env", account.hmac_secrets_env,
                                      MIN_HMAC_KEY_LENGTH, "HMAC key", env)  # fmt: skip
    return IngressAccounts(
        names=frozenset(file.accounts),
        any_name=file.any_name,
        secrets=secrets,
        hmac_secrets=hmac_secrets,
        hmac_required=frozenset(n for n, a in file.accounts.items() if a.hmac_required),
    )


def worker_accounts(env: Mapping[str, str] = os.environ) -> WorkerAccounts:
    """The worker's view: only each broker's credentials are checked; webhook secrets
    are none of its business."""
    file = read_accounts(env)
    for name, account in file.accounts.items():
        for key, var in account.broker.env_vars():
            if not env.get(var):
                raise SettingsError(
                    f"{file.path}: account {name!r}: {key} names {var}, which is not set"
                )
    return WorkerAccounts(accounts=file.accounts, any_name=file.any_name)


def _secrets(
    where: str,
    key: str,
    names: tuple[str, ...],
    minimum: int,
    kind: str,
    env: Mapping[str, str],
) -> tuple[Secret, ...]:
    for var in names:
        value = env.get(var)
        if not value:
            raise SettingsError(f"{where}: {key} names {var}, which is not set")
        if len(value) < minimum:
            raise SettingsError(
                f"{where}: the {kind} in {var} is shorter than {minimum} characters"
            )
    return tuple(Secret(env[var]) for var in names)


def _where(message: str) -> str:
    """msgspec says "… - at `$.ccxt.exchange`"; people say (key 'ccxt.exchange')."""
    head, sep, at = message.rpartition(" - at `$")
    if not sep:
        return message
    key = at.rstrip("`").lstrip(".")
    return head + (f" (key {key!r})" if key else "")
