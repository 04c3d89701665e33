"""Prometheus metrics, on a registry of each app's own (so tests can build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Event deliveries: a second normally, up to a day of retries.
DELAY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 86400.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "avatar_http_requests_total",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "avatar_http_request_duration_seconds",
            "HTTP request duration by route template.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.bytes_in = Counter(
            "avatar_http_request_bytes_total",
            "Request body bytes received, by route template.",
            ["route"],
            registry=self.registry,
        )
        self.bytes_out = Counter(
            "avatar_http_response_bytes_total",
            "Response body bytes sent, by route template.",
            ["route"],
            registry=self.registry,
        )
        self.uploads = Counter(
            "avatar_uploads_total",
            "Avatar uploads by outcome: `created` or the problem code.",
            ["outcome"],
            registry=self.registry,
        )
        self.uploads_in_flight = Gauge(
            "avatar_uploads_in_flight",
            "Uploads being received, processed or stored right now.",
            registry=self.registry,
        )
        self.processing_seconds = Histogram(
            "avatar_image_processing_seconds",
            "Time spent in the image pipeline per upload (in a worker, queueing excluded).",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.renditions = Counter(
            "avatar_renditions_derived_total",
            "Renditions (a square in another size or format) derived on first request, by "
            "format; their pool time is in avatar_image_processing_seconds.",
            ["format"],
            registry=self.registry,
        )
        self.storage_seconds = Histogram(
            "avatar_storage_operation_seconds",
            "Storage call latency by operation.",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.storage_errors = Counter(
            "avatar_storage_errors_total",
            "Storage calls that failed, by operation.",
            ["operation"],
            registry=self.registry,
        )
        # Events from the outbox (app/services/outbox.py), as this process's dispatcher sees them.
        self.events_pending = Gauge(
            "avatar_events_pending",
            "Event deliveries not made yet (waiting, retrying or in flight), all processes.",
            registry=self.registry,
        )
        self.events_dead = Gauge(
            "avatar_events_dead",
            "Event deliveries given up after the retry window, all processes.",
            registry=self.registry,
        )
        self.event_deliveries = Counter(
            "avatar_event_deliveries_total",
            "Delivery attempts by this process, by target and outcome: delivered, retried, dead.",
            ["target", "outcome"],
            registry=self.registry,
        )
        self.event_delivery_delay = Histogram(
            "avatar_event_delivery_delay_seconds",
            "From the change of the avatar to its event's delivery, by target.",
            ["target"],
            buckets=DELAY_BUCKETS,
            registry=self.registry,
        )
