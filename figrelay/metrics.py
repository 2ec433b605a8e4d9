"""Prometheus metrics (``GET /metrics``).

Labels are bounded: the configured client names and Fig's seven event types, never a setting
client's name (unbounded, and chosen by whoever can post events).
"""

from __future__ import annotations

import math
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, choose_encoder

from .delivery import Delivered, Delivery, Failed, Outcome
from .dispatch import DeliveryObserver
from .journal import JournalStats, Pruned
from .storage import StoredDelivery

__all__ = ["Children", "Metrics", "CONTENT_TYPE_LATEST"]

# From a fraction of a second (a healthy target) to a day (retries over an outage).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 24 * 3600)
ATTEMPT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Children:
    """``metric.labels(*values)``, remembered: prometheus-client checks the values and takes a lock
    on every call, which the intake and the dispatcher would pay for every event. Only for
    metrics whose children are never removed (no ``clear()``), with bounded labels."""

    __slots__ = ("_cache", "_metric")

    def __init__(self, metric: Counter | Histogram) -> None:
        self._metric = metric
        self._cache: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._cache.get(values)
        if child is None:
            child = self._cache[values] = self._metric.labels(*values)
        return child


class Metrics(DeliveryObserver):
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events = Counter("figrelay_events_received", "Events received on the intake, by type and outcome", ["event", "outcome"], registry=r)
        self.matches = Counter("figrelay_hook_matches", "Deliveries created by hook matches (and session thresholds)", ["client", "event"], registry=r)
        self.regex_timeouts = Counter(
            "figrelay_regex_timeouts", "Hook regexes that ran out of time on an event (kept as a dead letter when it would have fired)",
            ["client", "regex"], registry=r,
        )
        self.deliveries = Counter("figrelay_deliveries", "Delivery outcomes by client: delivered, retried or dead", ["client", "outcome"], registry=r)
        self.latency = Histogram(
            "figrelay_delivery_latency_seconds", "Time from accepting an event to delivering it, retries included", ["client"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.attempt = Histogram(
            "figrelay_delivery_attempt_seconds", "Duration of one delivery attempt", ["client"], buckets=ATTEMPT_BUCKETS, registry=r
        )
        self.pending = Gauge("figrelay_outbox_pending", "Deliveries waiting in the outbox", ["client"], registry=r)
        self.dead = Gauge("figrelay_outbox_dead", "Dead letters kept in the outbox", ["client"], registry=r)
        self.oldest = Gauge("figrelay_outbox_oldest_pending_age_seconds", "Age of the oldest pending delivery", ["client"], registry=r)
        self.circuit_open = Gauge(
            "figrelay_client_circuit_open", "1 while a client's circuit is open (failing: one probe at a time, the rest wait)", ["client"], registry=r
        )
        self.consecutive_failures = Gauge("figrelay_client_consecutive_failures", "Failed sends in a row, per client", ["client"], registry=r)
        self.waiting_removed = Gauge(
            "figrelay_outbox_waiting_for_removed_client", "Pending deliveries of a removed client, waiting for its return", ["client"], registry=r
        )
        self.connections_open = Gauge("figrelay_intake_connections_open", "Intake connections open now (intake.max_connections bounds them)", registry=r)
        self.connections_refused = Counter(
            "figrelay_intake_connections_refused", "Intake connections refused or closed: too_many_connections, header_timeout, accept_failed", ["reason"],
            registry=r,
        )
        self.outbox_writable = Gauge("figrelay_outbox_writable", "1 while the outbox takes writes; 0 while the intake answers 503 (a full disk)", registry=r)
        self.store_paused = Gauge("figrelay_dispatch_paused_store_error", "1 while sending is paused because outcomes cannot be recorded", registry=r)
        self.sessions = Gauge("figrelay_sessions_tracked", "Run sessions figrelay currently counts", registry=r)
        self.reloads = Counter("figrelay_config_reloads", "Configuration reloads by result", ["result"], registry=r)
        self.reload_ok = Gauge("figrelay_config_last_reload_successful", "1 when the last reload was applied, 0 when it was rejected", registry=r)
        self.reload_time = Gauge("figrelay_config_last_reload_success_timestamp_seconds", "When a configuration was last applied", registry=r)
        self.plugin_failures = Gauge("figrelay_plugin_load_failures", "Plugins that failed to load", registry=r)
        self.up_since = Gauge("figrelay_start_time_seconds", "When the daemon started", registry=r)
        self.journal_bytes = Gauge(
            "figrelay_journal_bytes", "Room the event journal takes in the outbox's database, in pages (journal.max_bytes bounds it)", registry=r
        )
        self.journal_oldest = Gauge(
            "figrelay_journal_oldest_event_timestamp_seconds", "When the oldest event kept in the journal was accepted (NaN while it is empty)",
            registry=r,
        )
        self.journal_pruned = Counter(
            "figrelay_journal_pruned_events", "Events pruned from the journal: by age (journal.retention), size (journal.max_bytes) or because it is off",
            ["reason"], registry=r,
        )
        self.config_info = Gauge(
            "figrelay_config_info", "1, labelled with the hash of the configuration loaded now: replicas sharing a store must show the same",
            ["hash"], registry=r,
        )
        self.lanes_held = Gauge(
            "figrelay_replica_lane_held", "1 for each client whose lane this replica holds (several replicas: one sends to a client at a time)",
            ["client"], registry=r,
        )
        self.lanes_count = Gauge("figrelay_replica_lanes_held", "Clients whose lane this replica holds now", registry=r)
        self.replicas = Gauge("figrelay_replicas_alive", "Replicas sharing the store that renewed their presence within a lease", registry=r)
        self.claims = Counter("figrelay_replica_claims", "Deliveries this replica claimed from the shared store to send", registry=r)
        self.event_count = Children(self.events)
        """events(event, outcome), remembered"""
        self.match_count = Children(self.matches)
        self._delivery_count = Children(self.deliveries)
        self._latency = Children(self.latency)
        self._attempt = Children(self.attempt)
        for reason in ("age", "size", "disabled"):
            self.journal_pruned.labels(reason)  # 0 from the start: increase() sees the first prune
        self.reload_ok.set(1)
        self.reload_time.set(time.time())
        self.up_since.set(time.time())

    def set_config_hash(self, digest: str) -> None:
        self.config_info.clear()
        self.config_info.labels(digest).set(1)

    def set_lanes(self, held: list[str]) -> None:
        self.lanes_held.clear()
        for client in held:
            self.lanes_held.labels(client).set(1)
        self.lanes_count.set(len(held))

    # --- DeliveryObserver ---------------------------------------------------------------------

    def attempted(self, delivery: Delivery, outcome: Outcome, seconds: float) -> None:
        self._attempt(delivery.client).observe(seconds)

    def finished(self, row: StoredDelivery, result: str) -> None:
        self._delivery_count(row.client, result).inc()
        if result == "delivered":
            self._latency(row.client).observe(max(0.0, time.time() - row.created_at))

    def retried(self, row: StoredDelivery) -> None:
        self._delivery_count(row.client, "retried").inc()

    def expired(self, client: str) -> None:
        self._delivery_count(client, "dead").inc()

    def circuit(self, client: str, is_open: bool, failures: int) -> None:
        self.circuit_open.labels(client).set(1 if is_open else 0)
        self.consecutive_failures.labels(client).set(failures)

    def sending_paused(self, paused: bool) -> None:
        self.store_paused.set(1 if paused else 0)

    # --- the rest -------------------------------------------------------------------------------

    def reloaded(self, applied: bool) -> None:
        self.reloads.labels("applied" if applied else "rejected").inc()
        self.reload_ok.set(1 if applied else 0)
        if applied:
            self.reload_time.set(time.time())

    def set_outbox(self, stats: dict[str, tuple[int, int, float | None]], clients: list[str]) -> None:
        """Per client: (pending, dead, oldest pending created_at). Clients with none read 0."""
        now = time.time()
        configured = set(clients)
        for client in configured | set(stats):
            pending, dead, oldest = stats.get(client, (0, 0, None))
            self.waiting_removed.labels(client).set(0 if client in configured else pending)
            if client in configured:
                self.circuit_open.labels(client)  # 0 until it opens: a series to alert on from the start
            self.pending.labels(client).set(pending)
            self.dead.labels(client).set(dead)
            self.oldest.labels(client).set(max(0.0, now - oldest) if oldest is not None else 0)

    def set_journal(self, stats: JournalStats) -> None:
        self.journal_bytes.set(stats.bytes)
        # NaN, not 0, for an empty journal: an alert on its age must not read "accepted in 1970"
        self.journal_oldest.set(stats.oldest_event if stats.oldest_event is not None else math.nan)

    def record_journal_pruning(self, pruned: Pruned) -> None:
        if pruned.stats is None:
            self.journal_pruned.labels("disabled").inc(pruned.by_age)
            return
        self.journal_pruned.labels("age").inc(pruned.by_age)
        self.journal_pruned.labels("size").inc(pruned.by_size)
        self.set_journal(pruned.stats)

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition and its full Content-Type for a request's ``Accept`` header.

        prometheus-client negotiates: OpenMetrics (ending ``# EOF``) for a scraper that asks for
        ``application/openmetrics-text``, else the text format; the Content-Type carries the
        version and charset the scraper needs to parse the answer, so it is passed on whole.
        """
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type


def outcome_name(outcome: Outcome) -> str:
    if isinstance(outcome, Delivered):
        return "delivered"
    if isinstance(outcome, Failed):
        return "dead"
    return "retried"
