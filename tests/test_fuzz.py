"""Schemathesis against a real `python -m ingress` (its own OpenAPI document) and a real
nats-server on the least-privilege configuration (deploy/nats-server.conf, the ingress
as its own NATS account), with the sender checks switched on and two accounts, each
with its own webhook secret.

Every generated request, positive or negative (wrong types, missing and extra fields,
overlong strings, odd unicode, bad signatures, random path secrets), must get:
  - no 5xx;
  - on a 4xx, a JSON object with a non-empty `error`, and never the secret;
  - an answer the document describes (status, content type, headers, body schema);
and afterwards the ALERTS stream must hold exactly as many messages as there were
first-time 200s (nothing refused was published), some must have been accepted, and no
secret may be anywhere in the stream or the ingress's log.

Most cases carry a real secret (in the body or the path: the global one, or account
alpha's for alpha) so that the requests get past the 401 and into validation and
publishing; some carry alpha's secret for the default account, which must be a 401.

The normal suite runs `ALERTBRIDGE_FUZZ_REQUESTS` (default 300) requests; `just fuzz`
runs 10,000. The seed, the count and the status histogram are printed.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from nats.js.client import JetStreamContext
from schemathesis import Case, GenerationMode, Response
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from contracts.subjects import ALERTS_STREAM
from ops.platform.settings import PREFIX
from tests.ingress_support import SECRET, Process, ingress_env, ingress_process, wait_ready
from tests.secured import Secured

REQUESTS = int(os.environ.get("ALERTBRIDGE_FUZZ_REQUESTS", "300"))
SEED = int(os.environ.get("ALERTBRIDGE_FUZZ_SEED", str(random.randrange(2**32))))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Hypothesis draws the first more often: most cases get in.
AUTH = ("global", "alpha", "wrong-account", "none")
HMAC_KEY = "f" * 32


ALPHA_SECRET = "alpha-9c1d0b7e55aa-own"
ACCOUNTS = f"""
[accounts.default]
broker = "paper"

[accounts.alpha]
broker = "paper"
webhook_secrets_env = ["{PREFIX}SECRET_ALPHA"]
"""
ALL_SECRETS = (SECRET, ALPHA_SECRET, HMAC_KEY)


@pytest.fixture
def fuzzed(secured: Secured, as_ops: JetStreamContext, tmp_path: Path) -> Iterator[Process]:
    """The ingress with every sender check on that still lets this machine in, as the
    `ingress` NATS user; ready (NATS connected, streams there) before the first case."""
    accounts = tmp_path / "alertbridge.toml"
    accounts.write_text(ACCOUNTS, encoding="utf-8")
    env = {
        **ingress_env(
            secured.server.url,
            allow_ips="127.0.0.1,tradingview",
            hmac_secrets=HMAC_KEY,
            rate_limit="6000/minute",
            account_rate_limit="3000/minute",
            rate_limit_exempt="none",
            config=str(accounts),
            secret_alpha=ALPHA_SECRET,
        ),
        **{k: v for k, v in secured.env("ingress").items() if "NATS" in k},
    }
    with ingress_process(env, tmp_path / "ingress.log") as process:
        asyncio.run(_until_ready(f"http://127.0.0.1:{process.port}"))
        yield process


async def _until_ready(url: str) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        await wait_ready(url, client, within=30)


async def _stored(secured: Secured) -> list[bytes]:
    """Every stored alert, subject, headers and data, as the operators read it."""
    nc = await secured.connect("ops")
    try:
        js = nc.jetstream()
        total = (await js.stream_info(ALERTS_STREAM)).state.messages
        found = []
        for seq in range(1, total + 1):
            msg = await js.get_msg(ALERTS_STREAM, seq=seq, direct=True)
            found.append(f"{msg.subject} {msg.headers}".encode() + (msg.data or b""))
        return found
    finally:
        await nc.close()


def _with_auth(case: Case[Any], auth: str) -> None:
    """Give some cases a real secret, where TradingView would put it: the global one;
    account alpha's, for alpha; or alpha's for the default account (a 401)."""
    if auth == "none":
        return
    secret = SECRET if auth == "global" else ALPHA_SECRET
    if case.path == "/webhook/{secret}":
        case.path_parameters = {**(case.path_parameters or {}), "secret": secret}
    elif isinstance(case.body, dict):
        case.body["secret"] = secret
    else:
        return
    if isinstance(case.body, dict):
        if auth == "alpha":
            case.body["account"] = "alpha"
        elif auth == "wrong-account":
            case.body["account"] = "default"
    for header in ("X-Signature", "X-Timestamp"):  # a wrong signature would still be a 401
        if case.headers is not None:
            case.headers.pop(header, None)


def _check_refusal(response: Response) -> None:
    content_type = {k.lower(): v for k, v in response.headers.items()}.get("content-type", [""])
    assert content_type[0].startswith("application/json"), (
        response.status_code,
        response.text[:200],
    )
    answer = response.json()
    assert isinstance(answer, dict) and answer.get("ok") is False, answer
    assert isinstance(answer.get("error"), str) and answer["error"], answer
    assert not [secret for secret in ALL_SECRETS if secret in response.text]


@pytest.mark.timeout(60 + REQUESTS // 10)
def test_fuzz_the_webhook_from_its_openapi_document(fuzzed: Process, secured: Secured) -> None:
    base = f"http://127.0.0.1:{fuzzed.port}"
    schema = schemathesis.openapi.from_url(f"{base}/schema/openapi.json", wait_for_schema=20)
    cases = st.one_of(
        schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE)
    )
    statuses: Counter[int] = Counter()
    reasons: Counter[str] = Counter()
    fresh = 0
    session = requests.Session()

    @seed(SEED)
    @settings(
        max_examples=REQUESTS,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases, auth=st.sampled_from(AUTH))
    def run(case: Case[Any], auth: str) -> None:
        nonlocal fresh
        _with_auth(case, auth)
        response = case.call(base_url=base, session=session, timeout=10)
        statuses[response.status_code] += 1
        if response.status_code == 200:
            fresh += not response.json()["duplicate"]
        elif response.status_code >= 400:
            _check_refusal(response)
            answer = response.json()
            fields = ",".join(sorted({e["field"] for e in answer.get("errors", [])}))
            reasons[
                f"{response.status_code} {answer['error']}" + (f" ({fields})" if fields else "")
            ] += 1
        case.validate_response(response, checks=CHECKS)

    print(f"\nfuzz seed {SEED} (ALERTBRIDGE_FUZZ_SEED={SEED} to repeat)")
    try:
        run()
    finally:
        total = sum(statuses.values())
        histogram = ", ".join(f"{status}: {n}" for status, n in sorted(statuses.items()))
        print(f"fuzz: {total} requests; status histogram {{{histogram}}}")
        for reason, n in reasons.most_common(12):
            print(f"  {n:6d}  {reason}")
        session.close()
    assert not [status for status in statuses if status >= 500]
    stored = asyncio.run(_stored(secured))
    assert len(stored) == fresh, "a refused request was published"
    assert fresh > 0, "nothing was accepted: the fuzzer never got past the doors"
    assert sum(statuses.values()) >= REQUESTS
    assert statuses[401] > 0, "no wrong secret was tried"
    for secret in ALL_SECRETS:
        assert not [m for m in stored if secret.encode() in m], "a secret was stored"
        assert secret not in fuzzed.output(), "a secret was logged"
