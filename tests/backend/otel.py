"""The test process's OpenTelemetry SDK: one MeterProvider, read in memory (and by Prometheus).

OpenTelemetry lets a process set its global MeterProvider once: the first test
that asks sets it, with an in-memory reader the tests read, and the Prometheus
exporter's reader when it is installed (docs/metrics.rst's recipe). The
backend's instruments, made from the global provider whenever the first event
came, record into it either way (the API forwards them). Readings are
cumulative for the process: tests pick the points of their own alias.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

POOL_NAME = "db.client.connection.pool.name"

_reader: InMemoryMetricReader | None = None
#: True when the Prometheus exporter's reader is attached too.
prometheus = False


def reader() -> InMemoryMetricReader:
    global _reader, prometheus
    if _reader is None:
        readers: list[Any] = [InMemoryMetricReader()]
        try:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
        except ImportError:
            pass
        else:
            readers.append(PrometheusMetricReader())
            prometheus = True
        metrics.set_meter_provider(MeterProvider(metric_readers=readers))
        _reader = readers[0]
    return _reader


def points(alias: str) -> dict[str, list[Any]]:
    """Every metric's data points for ``alias``, by metric name (one collection)."""
    found: dict[str, list[Any]] = {}
    data = reader().get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    if point.attributes.get(POOL_NAME) == alias:
                        found.setdefault(metric.name, []).append(point)
    return found


def total(found: dict[str, list[Any]], name: str, **attributes: Any) -> float:
    """The sum of a counter's values (or a histogram's counts) over matching points;
    attribute names are given with ``_`` for ``.`` (``server_port=5432``)."""
    result = 0.0
    for point in found.get(name, []):
        have = {k.replace(".", "_"): v for k, v in point.attributes.items()}
        if all(have.get(k) == v for k, v in attributes.items()):
            result += point.count if hasattr(point, "count") else point.value
    return result
