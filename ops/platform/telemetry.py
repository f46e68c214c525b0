"""OpenTelemetry bootstrap: traces and metrics, configured by the standard OTEL_* variables.

- Traces are exported over OTLP only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the
  traces-specific variable) is set; protocol from `OTEL_EXPORTER_OTLP_PROTOCOL`
  (`http/protobuf` default, or `grpc`); sampler from `OTEL_TRACES_SAMPLER`; service
  name from `OTEL_SERVICE_NAME`. With no endpoint nothing is exported or logged, and
  (unless `OTEL_TRACES_SAMPLER` says otherwise) spans are not even recorded: a
  recorded span costs several times the CPU of one that only carries its ids, for
  nobody to read (figures: docs/performance.md). The ids still travel
  with every alert and appear in logs and events; the traces' sampled flag is off, so
  the next process does not record them either.
- Metrics are always readable as Prometheus text (`metrics_text()`, served on
  `/metrics`), and also pushed over OTLP when an endpoint is set.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Final

from opentelemetry import metrics, trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from prometheus_client import REGISTRY, generate_latest

if TYPE_CHECKING:
    from collections.abc import Mapping

PROMETHEUS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


class Telemetry:
    """The process's providers; `shutdown()` flushes what is buffered."""

    def __init__(self, tracer_provider: TracerProvider, meter_provider: MeterProvider) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        # False when no span can be recorded (no trace exporter and no sampler asked
        # for): hot paths then skip making spans and only pass the trace context on.
        self.records_spans = tracer_provider.sampler is not ALWAYS_OFF

    def shutdown(self) -> None:
        """Flush and stop exporting (at process exit)."""
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def _otlp_protocol(env: Mapping[str, str], signal: str) -> str | None:
    """The OTLP protocol for `signal`, or None when it is not to be exported.

    `OTEL_{TRACES,METRICS}_EXPORTER=none` turns a signal off (e.g. Jaeger takes no metrics).
    """
    if env.get(f"OTEL_{signal}_EXPORTER", "otlp").strip().lower() == "none":
        return None
    endpoint = env.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not endpoint:
        return None
    return (
        env.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )


def setup(default_service_name: str, env: Mapping[str, str] = os.environ) -> Telemetry:
    """Install the global tracer and meter providers for this process."""
    attributes = {} if env.get("OTEL_SERVICE_NAME") else {"service.name": default_service_name}
    resource = Resource.create(attributes)  # also reads OTEL_SERVICE_NAME / _RESOURCE_ATTRIBUTES
    traces = _otlp_protocol(env, "TRACES")
    # The sampler: OTEL_TRACES_SAMPLER when set (the SDK reads it), else parent-based.
    sampler = ALWAYS_OFF if traces is None and not env.get("OTEL_TRACES_SAMPLER") else None
    tracer_provider = TracerProvider(resource=resource, sampler=sampler)
    if traces is not None:
        tracer_provider.add_span_processor(BatchSpanProcessor(_span_exporter(traces)))
    readers: list[MetricReader] = [PrometheusMetricReader()]
    if protocol := _otlp_protocol(env, "METRICS"):
        readers.append(PeriodicExportingMetricReader(_metric_exporter(protocol)))
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    return Telemetry(tracer_provider, meter_provider)


def _span_exporter(protocol: str) -> SpanExporter:
    # Imported on demand: a process that exports nothing loads neither gRPC nor protobuf.
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )

        return GrpcSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpSpanExporter,
    )

    return HttpSpanExporter()


def _metric_exporter(protocol: str) -> MetricExporter:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcMetricExporter,
        )

        return GrpcMetricExporter()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpMetricExporter,
    )

    return HttpMetricExporter()


def metrics_text() -> bytes:
    """Every metric of this process in the Prometheus text format."""
    return generate_latest(REGISTRY)


def status_class(status: int) -> str:
    """`2xx`, `4xx`, `5xx`...: the label that makes error rates visible."""
    return f"{status // 100}xx"
