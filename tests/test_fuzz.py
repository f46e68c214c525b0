"""Schemathesis against a real `python -m ingress` (its own OpenAPI document) and a real
nats-server, with the sender checks switched on.

Every generated request, positive or negative (wrong types, missing and extra fields,
overlong strings, odd unicode, bad signatures, random path secrets), must get:
  - no 5xx;
  - on a 4xx, a JSON object with a non-empty `error`, and never the secret;
  - an answer the document describes (status, content type, headers, body schema);
and the ALERTS stream must hold exactly as many messages as there were first-time 200s:
nothing refused was published.

A fraction of the cases carry the real secret (in the body or the path) so that the
requests get past the 401 and into validation and publishing.

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

import nats
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from nats.aio.client import Client
from schemathesis import Case, GenerationMode, Response
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from contracts.subjects import ALERTS_STREAM
from tests.ingress_support import SECRET, Process, ingress_env, ingress_process
from tests.support import NatsServer, wait_for_port

REQUESTS = int(os.environ.get("ALERTBRIDGE_FUZZ_REQUESTS", "300"))
SEED = int(os.environ.get("ALERTBRIDGE_FUZZ_SEED", str(random.randrange(2**32))))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
AUTH = ("secret", "none")  # Hypothesis draws the first more often: most cases get in


@pytest.fixture
def fuzzed(nats_server: NatsServer, nc: Client, tmp_path: Path) -> Iterator[Process]:
    """The ingress with every sender check on that still lets this machine in."""
    env = ingress_env(
        nats_server.url,
        allow_ips="127.0.0.1,tradingview",
        hmac_secrets="f" * 32,
        rate_limit="1000000/minute",
        account_rate_limit="1000000/minute",
        rate_limit_exempt="none",
    )
    with ingress_process(env, tmp_path / "ingress.log") as process:
        wait_for_port(process.port, timeout=20)
        yield process


async def _stored(url: str) -> int:
    nc = await nats.connect(url)
    try:
        return (await nc.jetstream().stream_info(ALERTS_STREAM)).state.messages
    finally:
        await nc.close()


def _with_auth(case: Case[Any], auth: str) -> None:
    """Give some cases the real secret, where TradingView would put it."""
    if auth != "secret":
        return
    if case.path == "/webhook/{secret}":
        case.path_parameters = {**(case.path_parameters or {}), "secret": SECRET}
    elif isinstance(case.body, dict):
        case.body["secret"] = SECRET
    else:
        return
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
    assert SECRET not in response.text


@pytest.mark.timeout(60 + REQUESTS // 10)
def test_fuzz_the_webhook_from_its_openapi_document(
    fuzzed: Process, nats_server: NatsServer
) -> None:
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
    assert asyncio.run(_stored(nats_server.url)) == fresh, "a refused request was published"
    assert sum(statuses.values()) >= REQUESTS
