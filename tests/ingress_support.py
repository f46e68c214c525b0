"""Helpers for the ingress's security tests: the app under a real uvicorn (in-process or
as `python -m ingress`), alert bodies, and a self-made CA issuing test certificates."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import subprocess
import time
from collections.abc import AsyncIterator, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from nats.aio.client import Client

from contracts.subjects import ALERTS_STREAM
from ingress import serve
from ingress.app import create_app
from ingress.settings import IngressSettings
from ops.platform.accounts import IngressAccounts
from ops.platform.settings import load
from tests.support import free_port, python_module

SECRET = "7f3c9a1e-long-enough"
TV_IP = "52.89.214.238"


def ingress_env(nats_url: str, **extra: str) -> dict[str, str]:
    """The environment of an ingress against `nats_url`, plus `extra` (ALERTBRIDGE_ omitted)."""
    return {
        "ALERTBRIDGE_NATS_URL": nats_url,
        "ALERTBRIDGE_SECRETS": SECRET,
        "ALERTBRIDGE_PARTITIONS": "4",
        "ALERTBRIDGE_PUBLISH_TIMEOUT": "0.5",
        **{f"ALERTBRIDGE_{key.upper()}": value for key, value in extra.items()},
    }


def settings(nats_url: str, **extra: str) -> IngressSettings:
    """Loaded the way the process loads them (so a bad combination fails the same way)."""
    return load(IngressSettings, ingress_env(nats_url, **extra))


def alert(**fields: Any) -> bytes:
    """A valid alert body with the secret, overridable field by field (None drops one)."""
    base: dict[str, Any] = {"secret": SECRET, "symbol": "NASDAQ:AAPL", "side": "buy", "qty": 1}
    merged = {**base, **fields}
    return json.dumps({k: v for k, v in merged.items() if v is not None}).encode()


async def stored(nc: Client) -> int:
    """How many alerts the ALERTS stream holds."""
    return (await nc.jetstream().stream_info(ALERTS_STREAM)).state.messages


async def wait_ready(url: str, client: httpx.AsyncClient, within: float = 15.0) -> None:
    """Until /readyz says 200 (NATS connected, streams there)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if (await client.get(f"{url}/readyz")).status_code == 200:
                return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{url} not ready within {within}s")


def listens(pid: int, port: int) -> bool:
    """Whether process `pid` holds a TCP socket listening on `port`, read from /proc (an
    ingress binds its SO_REUSEPORT socket early and listens only once its app started)."""
    return any(state == "0A" and local == port for state, local, _ in _tcp_sockets(pid))


def connects_to(pid: int, port: int) -> bool:
    """Whether process `pid` holds a TCP connection to `port` (e.g. a NATS server's)."""
    return any(state == "01" and remote == port for state, _, remote in _tcp_sockets(pid))


def _tcp_sockets(pid: int) -> Iterator[tuple[str, int, int]]:
    """(state, local port, remote port) of each TCP socket process `pid` holds."""
    inodes = set()
    with contextlib.suppress(OSError):  # gone, or not ours to look at: none
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):  # closed meanwhile
                target = str(fd.readlink())
                if target.startswith("socket:["):
                    inodes.add(target.removeprefix("socket:[").removesuffix("]"))
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        with contextlib.suppress(FileNotFoundError):
            for line in table.read_text().splitlines()[1:]:
                fields = line.split()  # sl local remote state ... inode (the 10th)
                if fields[9] in inodes:
                    local = int(fields[1].rpartition(":")[2], 16)
                    remote = int(fields[2].rpartition(":")[2], 16)
                    yield fields[3], local, remote


async def all_ready(url: str, port: int, pids: Collection[int], within: float = 20.0) -> None:
    """Until each process of `pids` listens on `port` and then 40 fresh connections in a row
    find a ready ingress. The kernel hashes each connection to one of the listeners, so
    every one has answered; one that listens without NATS (it gave up waiting for its first
    connection, ingress.publisher.FIRST_CONNECT_WAIT) answers 503 and the count starts
    over. (Readiness through one connection, or before every one
    listens, says nothing of the others: a late one would answer alerts 503, or none.)"""
    deadline = time.monotonic() + within
    while not all(listens(pid, port) for pid in pids):
        assert time.monotonic() < deadline, f"not every ingress of {sorted(pids)} listens"
        await asyncio.sleep(0.05)
    in_a_row = 0
    while in_a_row < 40:
        assert time.monotonic() < deadline, "not every ingress got ready"
        async with httpx.AsyncClient(timeout=5) as client:
            try:
                ok = (await client.get(f"{url}/readyz")).status_code == 200
            except httpx.TransportError:
                ok = False
        in_a_row = in_a_row + 1 if ok else 0
        if not ok:
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def serving_ingress(
    config: IngressSettings, accounts: IngressAccounts | None = None
) -> AsyncIterator[str]:
    """The ingress under a real uvicorn on a free port, in this event loop; yields its URL."""
    config = msgspec.structs.replace(config, http_port=free_port())
    server = serve.server(create_app(config, accounts), config)
    task = asyncio.create_task(server.serve())
    url = f"http://127.0.0.1:{config.http_port}"
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            await wait_ready(url, client)
        yield url
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


@dataclass
class Process:
    """A running `python -m ingress`."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def output(self) -> str:
        """What it wrote (stderr and stdout)."""
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def ingress_process(env: dict[str, str], log: Path) -> Iterator[Process]:
    """`python -m ingress` on a free port with `env`; stopped on exit."""
    port = free_port()
    proc = python_module(
        "ingress",
        {**env, "ALERTBRIDGE_HTTP_PORT": str(port), "ALERTBRIDGE_LOG_FORMAT": "json"},
        log,
    )
    process = Process(proc, port, log)
    try:
        yield process
    finally:
        process.stop()


# --- a self-made PKI -------------------------------------------------------------------


@dataclass
class Issued:
    """A certificate and its key, as PEM files."""

    cert: Path
    key: Path


class TestCA:
    """A throwaway certificate authority that issues server and client certificates."""

    __test__ = False  # not a test class, whatever its name says

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.name = name
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self._cert = (
            _builder(subject, subject, self._key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.cert = directory / f"{name}.pem"
        self.cert.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, file: str, subject: x509.Name, *, server: bool = False) -> Issued:
        """A leaf certificate for `subject` (a server's also names 127.0.0.1)."""
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = _builder(subject, self._cert.subject, key.public_key()).add_extension(
            x509.ExtendedKeyUsage([usage]), critical=False
        )
        if server:
            san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        issued = Issued(self.directory / f"{file}.pem", self.directory / f"{file}.key")
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return issued


def subject(common_name: str, organization: str) -> x509.Name:
    """`CN=<common_name>,O=<organization>,C=US`."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )
