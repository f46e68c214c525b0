"""`LocalHistogram` (ops.platform.otel_compat) gives every reader what the SDK's own
`Histogram.record` gives it: the same values, same calls, side by side in two real SDK
meter providers, compared point by point; and through a real OTLP/HTTP export."""

from __future__ import annotations

import logging
import math
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    InMemoryMetricReader,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import (
    DropAggregation,
    ExplicitBucketHistogramAggregation,
    ExponentialBucketHistogramAggregation,
    View,
)

from ops.platform.otel_compat import LocalHistogram
from tests.otlp import Receiver

BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
NAME = "alertbridge.test.duration"
ATTRIBUTES: tuple[Mapping[str, str] | None, ...] = (
    None,
    {"broker": "paper", "outcome": "ok"},
    {"broker": "paper", "outcome": "timeout"},
    {"broker": "alpaca", "outcome": "ok"},
)
DELTA: dict[type, AggregationTemporality] = {Histogram: AggregationTemporality.DELTA}

Recorder = Callable[[float, Mapping[str, str] | None], None]


def values(seed: int, n: int) -> list[float]:
    """Random latencies, every boundary itself, zero, and past the last bucket."""
    rng = random.Random(seed)
    drawn = [rng.expovariate(1 / 0.02) for _ in range(n)]
    return [*drawn, *BOUNDS, 0.0, 3.5, 1e-9]


def points(reader: MetricReader) -> dict[tuple[str, frozenset[Any]], Any]:
    """Each histogram point a collection gives, by (metric, attributes)."""
    assert isinstance(reader, InMemoryMetricReader)
    data = reader.get_metrics_data()
    found: dict[tuple[str, frozenset[Any]], Any] = {}
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for p in metric.data.data_points:
                    key = metric.name, frozenset((p.attributes or {}).items())
                    found[key] = p
    return found


def same(local: dict[Any, Any], sdk: dict[Any, Any]) -> None:
    assert local.keys() == sdk.keys()
    for key, want in sdk.items():
        got = local[key]
        assert list(got.bucket_counts) == list(want.bucket_counts), key
        assert list(got.explicit_bounds) == list(want.explicit_bounds), key
        assert (got.count, got.min, got.max) == (want.count, want.min, want.max), key
        assert math.isclose(got.sum, want.sum, rel_tol=1e-12), key


def pair(
    readers: Callable[[], Sequence[MetricReader]], views: Sequence[View] = ()
) -> tuple[tuple[LocalHistogram, Sequence[MetricReader]], tuple[Recorder, Sequence[MetricReader]]]:
    """The same set-up twice: a `LocalHistogram`, and the SDK's own histogram."""
    local_readers, sdk_readers = readers(), readers()
    local_meter = MeterProvider(metric_readers=local_readers, views=views).get_meter("t")
    sdk_meter = MeterProvider(metric_readers=sdk_readers, views=views).get_meter("t")
    local = LocalHistogram(local_meter, NAME, unit="s", description="d", boundaries=BOUNDS)
    sdk = sdk_meter.create_histogram(
        NAME, unit="s", description="d", explicit_bucket_boundaries_advisory=BOUNDS
    )
    return (local, local_readers), (sdk.record, sdk_readers)


def both(local: LocalHistogram, sdk: Recorder, seed: int, n: int = 2_000) -> None:
    rng = random.Random(seed)
    for value in values(seed, n):
        attributes = rng.choice(ATTRIBUTES)
        local.record(value, attributes)
        sdk(value, attributes)


def test_two_readers_one_cumulative_one_delta_each_get_every_value_once() -> None:
    (local, lr), (sdk, sr) = pair(lambda: [InMemoryMetricReader(), InMemoryMetricReader(DELTA)])
    assert local.direct is None  # counted locally
    for round_ in range(4):  # collections interleaved with records, readers out of step
        both(local, sdk, seed=round_)
        same(points(lr[1]), points(sr[1]))
        if round_ % 2:
            same(points(lr[0]), points(sr[0]))
    same(points(lr[0]), points(sr[0]))
    same(points(lr[1]), points(sr[1]))  # nothing since: a delta reader gets nothing
    assert points(lr[1]) == {}


def test_negative_and_not_finite_values_are_dropped_as_the_sdk_drops_them() -> None:
    (local, lr), (sdk, sr) = pair(lambda: [InMemoryMetricReader()])
    for value in (-0.001, math.nan, math.inf, -math.inf, 0.002):
        local.record(value, None)
        sdk(value, None)
    assert local.dropped == 4
    same(points(lr[0]), points(sr[0]))
    ((_, point),) = points(lr[0]).items()
    assert point.count == 1


def test_attributes_in_another_order_are_one_series() -> None:
    (local, lr), (sdk, sr) = pair(lambda: [InMemoryMetricReader()])
    for attributes in ({"a": "1", "b": "2"}, {"b": "2", "a": "1"}):
        local.record(0.003, attributes)
        sdk(0.003, attributes)
    got = points(lr[0])
    same(got, points(sr[0]))
    assert [p.count for p in got.values()] == [2]


def test_a_cardinality_limit_overflows_as_the_sdk_overflows() -> None:
    (local, lr), (sdk, sr) = pair(lambda: [InMemoryMetricReader(cardinality_limits={Histogram: 3})])
    for i in range(10):
        local.record(0.01 * i, {"n": str(i)})
        sdk(0.01 * i, {"n": str(i)})
    got, want = points(lr[0]), points(sr[0])
    same(got, want)
    assert (NAME, frozenset({("otel.metric.overflow", True)})) in got


def test_a_view_that_keeps_some_attributes_is_honoured() -> None:
    view = View(instrument_name=NAME, attribute_keys={"broker"})
    (local, lr), (sdk, sr) = pair(lambda: [InMemoryMetricReader()], [view])
    assert local.direct is None
    both(local, sdk, seed=7)
    got = points(lr[0])
    same(got, points(sr[0]))
    assert {dict(k[1]).get("broker") for k in got} == {None, "paper", "alpaca"}


@pytest.mark.parametrize(
    "aggregation",
    [ExplicitBucketHistogramAggregation([0.5, 1.0]), ExponentialBucketHistogramAggregation()],
)
def test_a_view_with_another_aggregation_leaves_the_histogram_to_the_sdk(
    aggregation: Any,
) -> None:
    view = View(instrument_name=NAME, aggregation=aggregation)
    (local, lr), (sdk, sr) = pair(lambda: [InMemoryMetricReader()], [view])
    assert local.direct is not None  # recorded by the SDK itself
    both(local, sdk, seed=3, n=200)
    got, want = points(lr[0]), points(sr[0])
    assert got.keys() == want.keys() and len(got) == len(ATTRIBUTES)
    assert [p.count for p in got.values()] == [p.count for p in want.values()]


def test_a_view_that_drops_it_exports_nothing() -> None:
    view = View(instrument_name=NAME, aggregation=DropAggregation())
    (local, lr), (sdk, sr) = pair(lambda: [InMemoryMetricReader()], [view])
    assert local.direct is None
    both(local, sdk, seed=5, n=100)
    assert points(lr[0]) == points(sr[0]) == {}


def test_a_reader_added_later_with_its_own_aggregation_gets_nothing_and_is_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[first])
    local = LocalHistogram(
        provider.get_meter("t"), NAME, unit="s", description="d", boundaries=BOUNDS
    )
    later = InMemoryMetricReader(
        preferred_aggregation={Histogram: ExponentialBucketHistogramAggregation()}
    )
    provider.add_metric_reader(later)
    with caplog.at_level(logging.WARNING, "ops.platform.otel_compat"):
        for _ in range(3):
            local.record(0.002, None)
            assert points(later) == {}
    assert [p.count for p in points(first).values()] == [3]
    warned = [r for r in caplog.records if "gets nothing" in r.getMessage()]
    assert len(warned) == 1 and NAME in warned[0].getMessage()


def test_without_the_sdk_it_records_on_what_the_meter_gave() -> None:
    meter = NoOpMeterProvider().get_meter("t")
    local = LocalHistogram(meter, NAME, unit="s", description="d", boundaries=BOUNDS)
    assert local.direct is not None
    local.record(0.002, {"a": "b"})  # no SDK: nothing to count, nothing raised


def test_values_recorded_while_another_thread_collects_are_each_counted_once() -> None:
    reader = InMemoryMetricReader(DELTA)
    meter = MeterProvider(metric_readers=[reader]).get_meter("t")
    local = LocalHistogram(meter, NAME, unit="s", description="d", boundaries=BOUNDS)
    done = threading.Event()
    counted: list[int] = []

    def collect() -> None:
        while not done.is_set():
            counted.extend(p.count for p in points(reader).values())
        counted.extend(p.count for p in points(reader).values())

    collector = threading.Thread(target=collect)
    collector.start()
    for i in range(100_000):
        local.record(0.001 * (i % 50), None)
    done.set()
    collector.join()
    assert sum(counted) == 100_000
    assert len(counted) > 1  # collected while recording, not only at the end


def test_an_otlp_export_carries_the_same_histogram() -> None:
    with Receiver() as receiver:
        exporter = OTLPMetricExporter(endpoint=f"{receiver.endpoint}/v1/metrics")
        periodic = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
        memory = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[periodic, memory])
        local = LocalHistogram(
            provider.get_meter("t"), NAME, unit="s", description="d", boundaries=BOUNDS
        )
        try:
            for value in values(11, 500):
                local.record(value, {"broker": "paper"})
            assert periodic.force_flush(10_000)
            want = points(memory)[NAME, frozenset({("broker", "paper")})]
        finally:
            provider.shutdown()
        exported = [
            p
            for request in receiver.metrics
            for rm in request.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
            if m.name == NAME
            for p in m.histogram.data_points
        ]
    assert len(exported) >= 1
    got = exported[0]
    assert {a.key: a.value.string_value for a in got.attributes} == {"broker": "paper"}
    assert list(got.bucket_counts) == list(want.bucket_counts)
    assert list(got.explicit_bounds) == list(want.explicit_bounds)
    assert (got.count, got.min, got.max) == (want.count, want.min, want.max)
    assert math.isclose(got.sum, want.sum)
