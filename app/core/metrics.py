"""Prometheus metrics, on a registry of each app's own (so tests can build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Event deliveries: a second normally, up to a day of retries.
DELAY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 86400.0)

# What each metric counts, by its name: the HELP line of /metrics.
HELP = {
    "avatar_http_requests_total": "HTTP requests by route template, method and status.",
    "avatar_http_request_duration_seconds": "HTTP request duration by route template.",
    "avatar_http_request_bytes_total": "Request body bytes received, by route template.",
    "avatar_http_response_bytes_total": "Response body bytes sent, by route template.",
    "avatar_uploads_total": "Avatar uploads by outcome: `created` or the problem code.",
    "avatar_uploads_in_flight": "Uploads being received, processed or stored right now.",
    "avatar_image_processing_seconds": (
        "Time spent in the image pipeline per upload (in a worker, queueing excluded)."
    ),
    "avatar_renditions_derived_total": (
        "Renditions (a square in another size or format) derived on first request, by format; "
        "their pool time is in avatar_image_processing_seconds."
    ),
    "avatar_storage_operation_seconds": "Storage call latency by operation.",
    "avatar_storage_errors_total": "Storage calls that failed, by operation.",
    "avatar_events_pending": (
        "Event deliveries not made yet (waiting, retrying or in flight), all processes."
    ),
    "avatar_events_dead": "Event deliveries given up after the retry window, all processes.",
    "avatar_event_deliveries_total": (
        "Delivery attempts by this process, by target and outcome: delivered, retried, dead."
    ),
    "avatar_event_delivery_delay_seconds": (
        "From the change of the avatar to its event's delivery, by target."
    ),
}


class Metrics:
    """Every metric this process records, each declared on one line: its name (whose HELP text
    is in ``HELP``) and its labels."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)

        def counter(name: str, *labels: str) -> Counter:
            return Counter(name, HELP[name], labels, registry=registry)

        def histogram(
            name: str, *labels: str, buckets: tuple[float, ...] = LATENCY_BUCKETS
        ) -> Histogram:
            return Histogram(name, HELP[name], labels, buckets=buckets, registry=registry)

        def gauge(name: str) -> Gauge:
            return Gauge(name, HELP[name], registry=registry)

        self.requests = counter("avatar_http_requests_total", "route", "method", "status")
        self.request_seconds = histogram("avatar_http_request_duration_seconds", "route", "method")
        self.bytes_in = counter("avatar_http_request_bytes_total", "route")
        self.bytes_out = counter("avatar_http_response_bytes_total", "route")
        self.uploads = counter("avatar_uploads_total", "outcome")
        self.uploads_in_flight = gauge("avatar_uploads_in_flight")
        self.processing_seconds = histogram("avatar_image_processing_seconds")
        self.renditions = counter("avatar_renditions_derived_total", "format")
        self.storage_seconds = histogram("avatar_storage_operation_seconds", "operation")
        self.storage_errors = counter("avatar_storage_errors_total", "operation")
        # Events from the outbox (app/services/outbox.py), as this process's dispatcher sees them.
        self.events_pending = gauge("avatar_events_pending")
        self.events_dead = gauge("avatar_events_dead")
        self.event_deliveries = counter("avatar_event_deliveries_total", "target", "outcome")
        self.event_delivery_delay = histogram(
            "avatar_event_delivery_delay_seconds", "target", buckets=DELAY_BUCKETS
        )
