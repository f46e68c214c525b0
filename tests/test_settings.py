"""Settings from the environment: defaults, lists, errors that name the variable, secrets."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from ingress.settings import IngressSettings, load_ingress
from ops.platform.settings import MIN_SECRET_LENGTH, Common, Secret, SettingsError, load
from worker.settings import WorkerSettings

if TYPE_CHECKING:
    from pathlib import Path

SECRET = "correct-horse-battery"
INGRESS_ENV = {"ALERTBRIDGE_SECRETS": SECRET}


def _error(cls: type[Common], env: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as info:
        load(cls, env)
    return str(info.value)


def test_worker_defaults() -> None:
    settings = load(WorkerSettings, {})
    assert settings == WorkerSettings()
    assert settings.nats_url == ("nats://127.0.0.1:4222",)
    assert settings.partitions == 16
    assert settings.replicas == 1
    assert settings.max_deliver == 20
    assert settings.ack_wait == 3.0
    assert settings.default_quantity is None
    assert settings.retry_backoff == (1.0, 2.0, 5.0, 10.0, 30.0)
    assert settings.health_port == 8081


def test_ingress_defaults() -> None:
    settings = load(IngressSettings, INGRESS_ENV)
    assert settings.http_host == "127.0.0.1"
    assert settings.http_port == 8080
    assert settings.max_body_bytes == 64 * 1024
    assert settings.publish_timeout == 1.0
    assert len(settings.secrets) == 1


def test_values_are_read_and_converted() -> None:
    settings = load(
        WorkerSettings,
        {
            "ALERTBRIDGE_PARTITIONS": " 4 ",
            "ALERTBRIDGE_ACK_WAIT": "12.5",
            "ALERTBRIDGE_DEFAULT_QUANTITY": "3",
            "ALERTBRIDGE_HEALTH_PORT": "9100",
            "ALERTBRIDGE_PAPER_DB": "var/other.db",
            "ALERTBRIDGE_UNRELATED": "ignored",
            "OTHER_PARTITIONS": "999",
        },
    )
    assert settings.partitions == 4
    assert settings.ack_wait == 12.5
    assert settings.default_quantity == 3.0
    assert settings.health_port == 9100
    assert settings.paper_db == "var/other.db"


def test_an_empty_variable_means_the_default() -> None:
    settings = load(WorkerSettings, {"ALERTBRIDGE_PARTITIONS": "", "ALERTBRIDGE_NATS_URL": "  "})
    assert settings.partitions == 16
    assert settings.nats_url == ("nats://127.0.0.1:4222",)


def test_comma_separated_lists() -> None:
    settings = load(
        WorkerSettings,
        {
            "ALERTBRIDGE_NATS_URL": "nats://a:4222, nats://b:4222 ,nats://c:4222",
            "ALERTBRIDGE_RETRY_BACKOFF": "0.5, 1,, 2.5",
        },
    )
    assert settings.nats_url == ("nats://a:4222", "nats://b:4222", "nats://c:4222")
    assert settings.retry_backoff == (0.5, 1.0, 2.5)


@pytest.mark.parametrize(
    ("cls", "var", "value", "detail"),
    [
        (WorkerSettings, "ALERTBRIDGE_PARTITIONS", "abc", "int"),
        (WorkerSettings, "ALERTBRIDGE_PARTITIONS", "0", ">= 1"),
        (WorkerSettings, "ALERTBRIDGE_ACK_WAIT", "soon", "float"),
        (WorkerSettings, "ALERTBRIDGE_ACK_WAIT", "0.5", ">= 1"),
        (WorkerSettings, "ALERTBRIDGE_RETRY_BACKOFF", "1,-2", "> 0"),
        (WorkerSettings, "ALERTBRIDGE_RETRY_BACKOFF", "1,x", "float"),
        (WorkerSettings, "ALERTBRIDGE_HEALTH_PORT", "70000", "65535"),
        (IngressSettings, "ALERTBRIDGE_PUBLISH_TIMEOUT", "5", "2.5"),
        (IngressSettings, "ALERTBRIDGE_HTTP_PORT", "http", "int"),
    ],
)
def test_a_bad_value_names_the_variable(
    cls: type[Common], var: str, value: str, detail: str
) -> None:
    message = _error(cls, {**INGRESS_ENV, var: value})
    assert var in message
    assert repr(value) in message
    assert detail in message


@pytest.mark.parametrize(
    ("var", "value"),
    [("ALERTBRIDGE_NATS_URL", ","), ("ALERTBRIDGE_RETRY_BACKOFF", " , ")],
)
def test_a_list_of_nothing_is_refused(var: str, value: str) -> None:
    # An empty server list cannot connect; an empty backoff schedule cannot be indexed.
    message = _error(WorkerSettings, {var: value})
    assert var in message


def test_ingress_without_a_secret_refuses_to_start() -> None:
    for env in ({}, {"ALERTBRIDGE_SECRETS": " , "}):
        with pytest.raises(SettingsError) as info:
            load_ingress(env)
        assert "ALERTBRIDGE_SECRETS" in str(info.value)
        assert "no default secret" in str(info.value)


def test_worker_needs_no_secret() -> None:
    assert load(WorkerSettings, {}).paper_db == "var/paper.db"


def test_several_secrets_for_rotation() -> None:
    settings = load(IngressSettings, {"ALERTBRIDGE_SECRETS": f"{SECRET}, second-secret-2"})
    assert [s.matches(SECRET.encode()) for s in settings.secrets] == [True, False]
    assert [s.matches(b"second-secret-2") for s in settings.secrets] == [False, True]


def test_a_short_secret_is_refused_without_showing_it() -> None:
    short = "x" * (MIN_SECRET_LENGTH - 1)
    message = _error(IngressSettings, {"ALERTBRIDGE_SECRETS": f"{SECRET},{short}"})
    assert "#2" in message
    assert str(MIN_SECRET_LENGTH) in message
    assert short not in message
    assert load(IngressSettings, {"ALERTBRIDGE_SECRETS": "y" * MIN_SECRET_LENGTH}).secrets


def test_secrets_file_one_per_line(tmp_path: Path) -> None:
    path = tmp_path / "secrets"
    path.write_text("file-secret-one\n\n  file-secret-two  \n", encoding="utf-8")
    settings = load(
        IngressSettings,
        {"ALERTBRIDGE_SECRETS": SECRET, "ALERTBRIDGE_SECRETS_FILE": str(path)},
    )
    assert len(settings.secrets) == 3
    for candidate in (SECRET, "file-secret-one", "file-secret-two"):
        assert sum(s.matches(candidate.encode()) for s in settings.secrets) == 1


def test_secrets_file_alone_is_enough(tmp_path: Path) -> None:
    path = tmp_path / "secrets"
    path.write_text("only-in-the-file\n", encoding="utf-8")
    settings = load(IngressSettings, {"ALERTBRIDGE_SECRETS_FILE": str(path)})
    assert [s.matches(b"only-in-the-file") for s in settings.secrets] == [True]


def test_a_short_secret_in_the_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secrets"
    path.write_text("long-enough-1\nshort\n", encoding="utf-8")
    message = _error(IngressSettings, {"ALERTBRIDGE_SECRETS_FILE": str(path)})
    assert "#2" in message
    assert "short" not in message.replace("shorter", "")


def test_an_unreadable_secrets_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "secrets"
    message = _error(IngressSettings, {**INGRESS_ENV, "ALERTBRIDGE_SECRETS_FILE": str(missing)})
    assert "ALERTBRIDGE_SECRETS_FILE" in message
    assert str(missing) in message
    # A directory is no file either.
    message = _error(IngressSettings, {**INGRESS_ENV, "ALERTBRIDGE_SECRETS_FILE": str(tmp_path)})
    assert str(tmp_path) in message


def test_the_secret_never_shows_in_repr_or_str(tmp_path: Path) -> None:
    path = tmp_path / "secrets"
    path.write_text("secret-from-the-file\n", encoding="utf-8")
    settings = load(
        IngressSettings, {"ALERTBRIDGE_SECRETS": SECRET, "ALERTBRIDGE_SECRETS_FILE": str(path)}
    )
    for text in (repr(settings), str(settings), repr(settings.secrets), str(settings.secrets[0])):
        assert SECRET not in text
        assert "secret-from-the-file" not in text
    assert "***" in repr(settings)


def test_secret_matches_only_the_exact_value() -> None:
    secret = Secret(SECRET)
    assert secret.matches(SECRET.encode())
    assert not secret.matches(b"wrong-secret-value-x")
    assert not secret.matches(SECRET.encode()[:-1])
    assert not secret.matches(SECRET.encode() + b"!")
    assert not secret.matches(b"")
    assert SECRET not in repr(secret)
    assert SECRET not in str(secret)


def test_unicode_secret_matches_its_utf8_bytes() -> None:
    assert Secret("pässwörd-€").matches("pässwörd-€".encode())


def test_topology_follows_the_settings() -> None:
    settings = load(WorkerSettings, {"ALERTBRIDGE_PARTITIONS": "3", "ALERTBRIDGE_MAX_DELIVER": "7"})
    topo = settings.topology()
    partitions = [c for c in topo.consumers if c.stream == "ALERTS"]  # the worker's only
    assert [c.durable for c in partitions] == ["worker-p0", "worker-p1", "worker-p2"]
    assert {c.max_deliver for c in partitions} == {7}
    assert [c.durable for c in topo.consumers if c.stream == "ADVISORIES"] == ["dlq-router"]
    assert [c.durable for c in topo.consumers if c.stream == "EVENTS"] == ["notifier", "projector"]
    projector = [c for c in topo.consumers if c.durable == "projector"]
    assert [c.stream for c in projector] == ["EVENTS", "DLQ"]  # it reads ALERTS by sequence
    assert {c.max_deliver for c in projector} == {-1}
    assert [s.name for s in topo.streams] == [
        "ALERTS", "EVENTS", "DLQ", "ADVISORIES", "RESENDS", "KV_HALTS", "KV_LIMITS", "KV_WORKERS",
    ]  # fmt: skip


def test_the_resend_window_stays_inside_the_duplicate_window() -> None:
    """A resend reuses the first sending's id: JetStream must still remember that id."""
    with pytest.raises(SettingsError, match="ALERTBRIDGE_RESEND_WINDOW must not exceed"):
        load(Common, {"ALERTBRIDGE_DUPLICATE_WINDOW": "30", "ALERTBRIDGE_RESEND_WINDOW": "60"})
    assert load(Common, {"ALERTBRIDGE_DUPLICATE_WINDOW": "60"}).resend_window == 60
