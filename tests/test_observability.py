"""Looking inside, as operators would: one trace per alert across the real processes,
the numbers on /metrics, and logs that carry trace ids and never a secret."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client

from tests.otlp import Receiver, Span, tree
from tests.support import NatsServer, free_port, python_module, wait_for_port

SECRET = "observability-secret-123"


@dataclass
class Stack:
    ingress: str
    worker: str
    ingress_log: Path
    worker_log: Path


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture
def stack(
    nats_server: NatsServer,
    nc: Client,  # the streams, provisioned as ops would
    worker_env: dict[str, str],
    tmp_path: Path,
    receiver: Receiver,
) -> Iterator[Stack]:
    http, health = free_port(), free_port()
    env = {
        **worker_env,
        "ALERTBRIDGE_SECRETS": SECRET,
        "ALERTBRIDGE_DEFAULT_QUANTITY": "1",
        "ALERTBRIDGE_HTTP_PORT": str(http),
        "ALERTBRIDGE_HEALTH_PORT": str(health),
        "ALERTBRIDGE_LOG_FORMAT": "json",
        "ALERTBRIDGE_LOG_LEVEL": "DEBUG",  # the ingress logs each accepted alert at DEBUG
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_METRIC_EXPORT_INTERVAL": "600000",
    }
    procs: list[subprocess.Popen[bytes]] = []
    logs = tmp_path / "ingress.log", tmp_path / "worker.log"
    procs.append(python_module("worker", env, logs[1]))
    procs.append(python_module("ingress", env, logs[0]))
    try:
        wait_for_port(http, 30)
        wait_for_port(health, 30)
        ingress, worker = f"http://127.0.0.1:{http}", f"http://127.0.0.1:{health}"
        _wait_ready(ingress)
        _wait_ready(worker)
        yield Stack(ingress, worker, *logs)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(20)


def _wait_ready(base: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while httpx.get(f"{base}/readyz", timeout=2).status_code != 200:
        assert time.monotonic() < deadline, f"{base} never ready"
        time.sleep(0.1)


def _post(base: str, body: Mapping[str, object], path: str = "/webhook") -> httpx.Response:
    return httpx.post(f"{base}{path}", content=json.dumps(body), timeout=5)


def _spans(receiver: Receiver, trace_id: str, kinds: set[str], within: float = 20) -> list[Span]:
    """The trace's spans once every kind in `kinds` has arrived (two processes export)."""
    deadline = time.monotonic() + within
    while True:
        found = receiver.trace(trace_id)
        if kinds <= {s.kind for s in found}:
            return found
        assert time.monotonic() < deadline, tree(found)
        time.sleep(0.1)


def test_one_trace_per_alert_across_ingress_worker_and_broker(
    stack: Stack, receiver: Receiver
) -> None:
    answer = _post(stack.ingress, {"secret": SECRET, "symbol": "NASDAQ:AAPL", "side": "buy"})
    assert answer.status_code == 200
    server = _wait_for(receiver, "SERVER")
    spans = _spans(receiver, server.trace_id, {"SERVER", "CONSUMER", "CLIENT"})
    print(tree(spans))  # the closing note quotes this
    by_kind = {s.kind: s for s in spans}
    assert set(by_kind) == {"SERVER", "CONSUMER", "CLIENT"}  # one span per hop, no others
    consumer, client = by_kind["CONSUMER"], by_kind["CLIENT"]
    assert {s.trace_id for s in spans} == {server.trace_id}  # one trace
    assert (server.service, consumer.service) == ("alertbridge-ingress", "alertbridge-worker")
    assert server.name == "POST /webhook"
    assert server.attributes["http.response.status_code"] == "200"
    assert server.attributes["messaging.message.id"] == answer.json()["id"]
    assert consumer.parent_id == server.span_id  # the ingress's span is the parent ...
    assert consumer.links == (server.span_id,)  # ... and a link
    assert client.parent_id == consumer.span_id
    assert consumer.name == "process alerts.in.{account}.{symbol}"
    assert consumer.attributes["messaging.consumer.group.name"].startswith("worker-p")


def test_a_secret_in_the_path_never_reaches_a_span(stack: Stack, receiver: Receiver) -> None:
    body = {"symbol": "NASDAQ:MSFT", "side": "buy", "id": "path-secret-span"}
    assert _post(stack.ingress, body, path=f"/webhook/{SECRET}").status_code == 200
    deadline = time.monotonic() + 20
    while not (found := [s for s in receiver.spans if s.name == "POST /webhook/{secret}"]):
        assert time.monotonic() < deadline, "no span for the path-secret route"
        time.sleep(0.1)
    assert found[0].attributes["http.route"] == "/webhook/{secret}"
    assert SECRET not in repr([(s.name, s.attributes) for s in receiver.spans])


def _wait_for(receiver: Receiver, kind: str, within: float = 20) -> Span:
    deadline = time.monotonic() + within
    while True:
        found = [s for s in receiver.spans if s.kind == kind]
        if found:
            return found[-1]
        assert time.monotonic() < deadline, f"no {kind} span received"
        time.sleep(0.1)


def _ancestors(span: Span, ids: dict[str, Span]) -> list[Span]:
    chain = []
    while span.parent_id in ids:
        span = ids[span.parent_id]
        chain.append(span)
    return chain


def _metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` that carry `labels`, from Prometheus text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        have = dict(part.split("=", 1) for part in label_text.rstrip("}").split(",") if "=" in part)
        if all(have.get(k) == f'"{v}"' for k, v in labels.items()):
            total += float(value)
    return total


def test_metrics_count_what_happened(stack: Stack) -> None:
    ok = {"secret": SECRET, "symbol": "MSFT", "side": "buy", "id": "m-1"}
    assert _post(stack.ingress, ok).status_code == 200
    assert _post(stack.ingress, ok).json()["duplicate"] is True
    assert _post(stack.ingress, {**ok, "id": "m-2"}).status_code == 200
    assert _post(stack.ingress, {**ok, "secret": "wrong-wrong"}).status_code == 401
    assert _post(stack.ingress, {**ok, "side": "hold"}).status_code == 422
    big = httpx.post(f"{stack.ingress}/webhook", content=b"x" * 70_000, timeout=5)
    assert big.status_code == 413
    text = httpx.get(f"{stack.ingress}/metrics", timeout=5).text
    requests = "alertbridge_ingress_requests_total"
    assert _metric(text, requests, route="/webhook", status_class="2xx") == 3
    assert _metric(text, requests, route="/webhook", status_class="4xx") == 3
    assert _metric(text, requests, route="/webhook", status="413") == 1
    assert _metric(text, "alertbridge_ingress_duplicates_total") == 1
    assert _metric(text, "alertbridge_ingress_publish_duration_seconds_count") == 3
    assert _metric(text, "alertbridge_ingress_publish_duration_seconds_bucket", le="+Inf") == 3
    assert 0 < _metric(text, "alertbridge_ingress_publish_duration_seconds_sum") < 15
    assert "handover" not in text  # the hand-over instrument observes nothing

    deadline = time.monotonic() + 20
    while True:
        worker = httpx.get(f"{stack.worker}/metrics", timeout=5).text
        executed = _metric(worker, "alertbridge_worker_outcomes_total", outcome="executed")
        pending = _metric(worker, "alertbridge_consumer_pending", consumer="worker-p0")
        if executed == 2 and "alertbridge_consumer_ack_pending" in worker:
            break
        assert time.monotonic() < deadline, worker
        time.sleep(0.2)
    assert pending == 0
    assert _metric(worker, "alertbridge_dlq_depth") == 0
    assert _metric(worker, "alertbridge_worker_alert_age_seconds_count") == 2
    assert _metric(worker, "alertbridge_worker_broker_duration_seconds_count", outcome="ok") == 2
    broker_buckets = "alertbridge_worker_broker_duration_seconds_bucket"
    assert _metric(worker, broker_buckets, outcome="ok", le="+Inf") == 2
    assert _metric(worker, "alertbridge_worker_alert_age_seconds_bucket", le="+Inf") == 2


def test_logs_are_json_with_trace_ids_and_never_a_secret(stack: Stack) -> None:
    body = {"secret": SECRET, "symbol": "BRK.B", "side": "buy", "id": "log-1"}
    assert _post(stack.ingress, body).status_code == 200
    path = {"symbol": "BRK.B", "side": "sell", "id": "log-2"}
    assert _post(stack.ingress, path, path=f"/webhook/{SECRET}").status_code == 200
    assert _post(stack.ingress, {**body, "secret": "a-wrong-secret-999"}).status_code == 401
    deadline = time.monotonic() + 20
    while "alert log-2 executed" not in (worker := stack.worker_log.read_text()):
        assert time.monotonic() < deadline, worker
        time.sleep(0.1)
    for log in (stack.ingress_log, stack.worker_log):
        text = log.read_text()
        assert SECRET not in text and "a-wrong-secret-999" not in text
        records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        assert records, text
        assert all({"time", "level", "logger", "message", "service"} <= r.keys() for r in records)
    accepted = [
        json.loads(line)
        for line in stack.ingress_log.read_text().splitlines()
        if "log-1 accepted" in line
    ]
    assert len(accepted) == 1 and len(accepted[0]["trace_id"]) == 32
