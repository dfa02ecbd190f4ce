"""Prometheus metrics of the service: jobs by status and queue depth read from the database at
scrape time (true across restarts and processes), trials and request latency counted here."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from tuner.db.jobs import status_counts


class _JobCollector(Collector):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterable[Metric]:
        try:
            counts = status_counts(self.engine)
        except SQLAlchemyError:
            return []
        jobs = GaugeMetricFamily("tuner_jobs", "Jobs in the database by status", labels=["status"])
        for status, n in counts.items():
            jobs.add_metric([status], n)
        queue = GaugeMetricFamily("tuner_queue_depth", "Jobs waiting for a worker")
        queue.add_metric([], counts["queued"])
        return [jobs, queue]


class Metrics:
    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_JobCollector(engine))
        self.trials = Counter("tuner_trials", "Trials measured by this service's jobs (rate() = trials per second)",
                              registry=self.registry)
        self.requests = Histogram("tuner_http_request_duration_seconds", "HTTP request latency",
                                  ["method", "route", "status"], registry=self.registry,
                                  buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).observe(seconds)

    def timer(self) -> Callable[[], float]:
        t0 = time.perf_counter()
        return lambda: time.perf_counter() - t0
