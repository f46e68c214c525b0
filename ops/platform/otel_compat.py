"""The one place alertbridge reaches into opentelemetry-sdk's internals (checked against
1.45): a histogram whose `record` costs a bisect and three additions.

The SDK's `Histogram.record` builds a `Measurement`, cleans and hashes its attributes,
asks the exemplar filter, and takes a lock per reader, on every call (docs/performance.md,
"The histograms' own cost"). `LocalHistogram` counts into buckets of its own instead,
and hands the counts over to each reader's aggregation when a reader collects: through
an observable instrument's callback, which the SDK runs before it reads its aggregations
(`SynchronousMeasurementConsumer.collect`). Every value reaches every reader once, with
the same buckets, sum, count, min and max as `record` would have given; what a reader
makes of them (cumulative or delta) is still the SDK's.

What is left out: exemplars (the Prometheus reader drops them anyway). A reader whose view
changes this histogram's aggregation (other buckets, another kind) cannot take counts:
when there is one at the start, the histogram is the SDK's own; a reader added later with
one gets nothing from it and says so once. Without the SDK's meter provider (no telemetry
installed) `record` goes to whatever instrument the meter gave.

Private names used: the instrument's `_measurement_consumer` and `_is_enabled()`, the
consumer's `_reader_storages`, a storage's `_get_or_init_view_instrument_match`, a view
match's `_view._attribute_keys`, `_aggregation`, `_lock` and `_get_or_create_aggregation`,
the module function `_hash_attributes`, and the explicit-bucket aggregation's `_lock`,
`_value`, `_sum`, `_min`, `_max`, `_record_min_max` and `_boundaries`. `pyproject.toml`
pins opentelemetry-sdk to the minor version named here, and `tests/test_compat.py` fails when
the installed one differs: an upgrade fails a test, not production.
"""

from __future__ import annotations

import logging
import math
import threading
from bisect import bisect_left
from typing import TYPE_CHECKING, Any, Final

from opentelemetry.sdk.metrics._internal._view_instrument_match import _hash_attributes
from opentelemetry.sdk.metrics._internal.aggregation import (
    _DropAggregation,
    _ExplicitBucketHistogramAggregation,
)
from opentelemetry.sdk.metrics._internal.instrument import _Histogram

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping, Sequence

    from opentelemetry.metrics import CallbackOptions, Histogram, Meter, Observation

log = logging.getLogger(__name__)

CHECKED: Final = "1.45"

_Key = tuple[tuple[str, str], ...]


class _Counts:
    """One attribute set's values since the last hand-over."""

    __slots__ = ("buckets", "high", "low", "total")

    def __init__(self, size: int) -> None:
        self.buckets = [0] * size
        self.total = 0.0
        self.low = math.inf
        self.high = -math.inf


class LocalHistogram:
    """A histogram with explicit buckets, counted here and handed to the SDK on collect."""

    def __init__(
        self,
        meter: Meter,
        name: str,
        *,
        unit: str,
        description: str,
        boundaries: Sequence[float],
    ) -> None:
        self.name = name
        self._bounds = tuple(float(b) for b in boundaries)
        self._instrument = meter.create_histogram(
            name, unit=unit, description=description,
            explicit_bucket_boundaries_advisory=list(self._bounds),
        )  # fmt: skip
        self._lock = threading.Lock()
        self._pending: dict[_Key, _Counts] = {}
        self._refused: set[int] = set()  # readers told once they get nothing from here
        self.dropped = 0  # negative or not finite: the SDK drops them too
        self.direct: Histogram | None = self._instrument
        if isinstance(self._instrument, _Histogram) and self._fits_every_reader():
            self.direct = None
            meter.create_observable_gauge(
                f"{name}.handover",
                callbacks=[self._hand_over],
                description=f"hands {name}'s counts to the readers; observes nothing",
            )

    def record(self, value: float, attributes: Mapping[str, str] | None = None) -> None:
        """Count `value` under `attributes` (the same keys in another order are counted
        apart here and merged into one series in the SDK)."""
        if self.direct is not None:
            self.direct.record(value, attributes)
            return
        if not 0.0 <= value < math.inf:
            self.dropped += 1
            return
        key: _Key = tuple(attributes.items()) if attributes else ()
        with self._lock:
            counts = self._pending.get(key)
            if counts is None:
                counts = self._pending[key] = _Counts(len(self._bounds) + 1)
            counts.buckets[bisect_left(self._bounds, value)] += 1
            counts.total += value
            counts.low = min(counts.low, value)
            counts.high = max(counts.high, value)

    def _matches(self) -> Iterator[tuple[Any, Any]]:
        """(reader storage, view match) for each view of this histogram in each reader."""
        storages = list(self._instrument._measurement_consumer._reader_storages.values())  # type: ignore[attr-defined]
        for storage in storages:
            for match in storage._get_or_init_view_instrument_match(self._instrument):
                yield storage, match

    def _fits_every_reader(self) -> bool:
        """Whether every reader there is takes this histogram as explicit buckets of
        these bounds (or drops it)."""
        if all(self._fits(match._aggregation) for _, match in self._matches()):
            return True
        log.info("%s: a view changes its aggregation; recorded by the SDK", self.name)
        return False

    def _fits(self, aggregation: object) -> bool:
        if isinstance(aggregation, _DropAggregation):
            return True
        return (
            isinstance(aggregation, _ExplicitBucketHistogramAggregation)
            and aggregation._boundaries == self._bounds
        )

    def _hand_over(self, _: CallbackOptions) -> Iterable[Observation]:
        """Move the counts since the last hand-over into every reader's aggregations
        (run by the SDK, under its collection lock, before any reader reads them)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending or not self._instrument._is_enabled():  # type: ignore[attr-defined]
            return []
        for storage, match in self._matches():
            if not self._fits(match._aggregation):
                self._refuse(storage)
            elif not isinstance(match._aggregation, _DropAggregation):
                for key, counts in pending.items():
                    _merge(match, dict(key), counts)
        return []

    def _refuse(self, storage: object) -> None:
        if id(storage) not in self._refused:
            self._refused.add(id(storage))
            log.warning("%s: a reader added with a view of its own gets nothing", self.name)


def _merge(match: Any, attributes: dict[str, str], counts: _Counts) -> None:
    """Add `counts` to the view match's aggregation for `attributes`, as `record` would."""
    keys = match._view._attribute_keys
    if keys is not None:
        attributes = {k: v for k, v in attributes.items() if k in keys}
    with match._lock:
        aggregation = match._get_or_create_aggregation(_hash_attributes(attributes), attributes)
        with aggregation._lock:
            if aggregation._value is None:
                aggregation._value = [0] * len(counts.buckets)
            for index, count in enumerate(counts.buckets):
                aggregation._value[index] += count
            aggregation._sum += counts.total
            if aggregation._record_min_max:
                aggregation._min = min(aggregation._min, counts.low)
                aggregation._max = max(aggregation._max, counts.high)
