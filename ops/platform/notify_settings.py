"""Where notifications go: the `[notify]` table and each account's `notify_urls_env`.

An Apprise URL carries a token (a bot's, a webhook's), so like every credential it is
never in the file: the file names the environment variables that hold the URLs, one URL
a variable. Read and checked at start (the notifier, `alertbridge config check`,
`alertbridge notify test`): a variable that is unset, or holds nothing Apprise can send
to, is an error that names the variable, never its value. A URL is never logged: Apprise's
own log names hosts and, for some services, the host is the token, so it is silenced.

    [notify]
    urls_env = ["ALERTBRIDGE_NOTIFY_URL"]   # global targets: every notification
    fold_interval = 60        # at most one message per (account, kind) per interval
    broker_down_after = 30    # retryable failures and no order for this long: "down"
    dlq_depth_threshold = 10  # the DLQ holding more entries than this is news (0: off)
    max_event_age = 86400     # older events are history when first read (0: none)

    [accounts.default]
    notify_urls_env = ["ALERTBRIDGE_NOTIFY_DEFAULT"]  # this account's news goes here too
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Final

import apprise
import msgspec

from contracts.topology import DAY
from ops.platform.accounts import NOTIFY_TABLE, EnvName, config_path, read_accounts
from ops.platform.settings import Secret, SettingsError

if TYPE_CHECKING:
    from collections.abc import Mapping

Seconds = Annotated[float, msgspec.Meta(gt=0)]
TITLE_PREFIX: Final = "alertbridge"

# Apprise logs hosts, paths and unparseable URLs as they are: tokens, for some services.
logging.getLogger("apprise").disabled = True


class NotifyConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The `[notify]` table as written."""

    urls_env: tuple[EnvName, ...] = ()
    fold_interval: Seconds = 60.0
    broker_down_after: Seconds = 30.0
    dlq_depth_threshold: Annotated[int, msgspec.Meta(ge=0)] = 10
    max_event_age: Annotated[float, msgspec.Meta(ge=0)] = DAY


@dataclass(frozen=True)
class Target:
    """One place notifications go: the variable that names it, and its URL (a secret)."""

    name: str
    url: Secret


@dataclass(frozen=True)
class NotifyTargets:
    """The settings and every target, checked: global ones and each account's own."""

    config: NotifyConfig
    everywhere: tuple[Target, ...]
    accounts: dict[str, tuple[Target, ...]]

    def for_account(self, account: str | None) -> tuple[Target, ...]:
        """Where news about `account` goes (None: news about the whole system)."""
        own = self.accounts.get(account, ()) if account is not None else ()
        return _unique((*self.everywhere, *own))

    def all(self) -> tuple[Target, ...]:
        """Every target once."""
        return _unique((*self.everywhere, *(t for ts in self.accounts.values() for t in ts)))

    def named(self, name: str) -> Target | None:
        """The target held by variable `name`, if it is still configured."""
        return next((t for t in self.all() if t.name == name), None)


def read_notify(env: Mapping[str, str]) -> NotifyTargets:
    """Read `[notify]` and the accounts' `notify_urls_env`; SettingsError names the key
    and the variable, never a URL."""
    path = config_path(env)
    if path is None:
        return NotifyTargets(config=NotifyConfig(), everywhere=(), accounts={})
    accounts = read_accounts(env)  # the file's structure, checked with its own messages
    try:
        top = msgspec.toml.decode(path.read_bytes(), type=dict[str, Any])
        config = msgspec.convert(top.get(NOTIFY_TABLE, {}), NotifyConfig)
    except (OSError, msgspec.DecodeError) as exc:
        raise SettingsError(f"{path}: [{NOTIFY_TABLE}]: {_where(str(exc))}") from None
    everywhere = _targets(f"{path}: [{NOTIFY_TABLE}] urls_env", config.urls_env, env)
    own = {
        name: _targets(f"{path}: account {name!r}: notify_urls_env", account.notify_urls_env, env)
        for name, account in accounts.accounts.items()
    }
    return NotifyTargets(config=config, everywhere=everywhere, accounts=own)


def _targets(where: str, names: tuple[str, ...], env: Mapping[str, str]) -> tuple[Target, ...]:
    targets = []
    for var in names:
        value = env.get(var, "").strip()
        if not value:
            raise SettingsError(f"{where} names {var}, which is not set")
        if not _client(value).urls():
            raise SettingsError(
                f"{where} names {var}, which holds no URL Apprise can send to "
                "(https://github.com/caronc/apprise/wiki)"
            )
        targets.append(Target(var, Secret(value)))
    return tuple(targets)


def _client(url: str) -> apprise.Apprise:
    # In memory: no state files from services that keep some (the notifier has its own).
    client = apprise.Apprise(asset=apprise.AppriseAsset(storage_mode="memory"))
    client.add(url)
    return client


async def send(target: Target, title: str, body: str) -> bool:
    """Send one message to one target; False when it was not delivered (retry later)."""
    result = await _client(target.url.reveal()).async_notify(
        body=body, title=f"{TITLE_PREFIX}: {title}"
    )
    return bool(result)


def _unique(targets: tuple[Target, ...]) -> tuple[Target, ...]:
    seen: dict[str, Target] = {}
    for target in targets:
        seen.setdefault(target.name, target)
    return tuple(seen.values())


def _where(message: str) -> str:
    """msgspec says "… - at `$.fold_interval`"; people say (key 'fold_interval')."""
    head, sep, at = message.rpartition(" - at `$")
    if not sep:
        return message
    key = at.rstrip("`").lstrip(".")
    return head + (f" (key {key!r})" if key else "")
