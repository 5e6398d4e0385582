"""Prometheus metrics: what operators graph and alert on."""

from __future__ import annotations

import re
import time

from deployments import samples, serving, value
from payloads import GOOD_FEATURES, GOOD_IMAGE
from prometheus_client.parser import text_string_to_metric_families
from shipped_service import ROOT


def test_requests_are_counted_by_route_template_and_status(client):
    before = samples(client)
    client.post("/predict/iris", json=GOOD_FEATURES)
    client.post("/predict/iris", json={"features": [1]})
    client.post("/predict/image", files={"file": GOOD_IMAGE})
    client.get("/no/such/path/123")
    client.get("/openapi.json")  # a plain Starlette route, which puts itself in no scope
    after = samples(client)

    def delta(name, **labels):  # a counter's series appears with its first increment
        return value(after, name, **labels) - before.get((name, tuple(sorted(labels.items()))), 0.0)

    assert (
        delta("http_requests_total", route="/predict/{model}", method="POST", status="200", protocol="native")
        == 1
    )
    assert (
        delta("http_requests_total", route="/predict/{model}", method="POST", status="422", protocol="native")
        == 1
    )
    assert (
        delta("http_requests_total", route="/predict/image", method="POST", status="200", protocol="native")
        == 1
    )
    assert delta("http_requests_total", route="unmatched", method="GET", status="404", protocol="native") == 1
    assert (
        delta("http_requests_total", route="/openapi.json", method="GET", status="200", protocol="native")
        == 1
    )
    assert delta("http_request_duration_seconds_count", route="/predict/image", protocol="native") == 1
    assert (
        0 < delta("http_request_duration_seconds_sum", route="/predict/image", protocol="native") < 10
    )  # seconds
    assert delta("model_batch_size_count", model="cifar10") == 1
    assert delta("model_batch_size_sum", model="iris") == 1


def test_a_requests_latency_is_the_time_it_took(client):
    route = {"route": "/predict/{model}", "protocol": "native"}
    before = samples(client)
    started = time.perf_counter()
    assert client.post("/predict/iris", json=GOOD_FEATURES).status_code == 200
    took = time.perf_counter() - started
    after = samples(client)
    name = "http_request_duration_seconds_sum"
    observed = value(after, name, **route) - before.get((name, tuple(sorted(route.items()))), 0.0)
    assert 0 < observed <= took


def test_a_request_the_service_fails_on_is_counted_as_a_500(shared_models, monkeypatch):
    # The last resort answers from outside every middleware: the count cannot read its status.
    with serving(shared_models) as client:
        predictor = client.app.state.registry.models["iris"].predictor
        monkeypatch.setattr(predictor, "predict", lambda batch: 1 / 0)
        assert client.post("/predict/iris", json=GOOD_FEATURES).status_code == 500
        counted = samples(client)
    labels = {"route": "/predict/{model}", "method": "POST", "status": "500", "protocol": "native"}
    assert value(counted, "http_requests_total", **labels) == 1


def test_idle_models_report_an_empty_queue_and_their_live_version(client):
    # Busy models' queues, with one worker and with several: tests/test_service_workers.py.
    now = samples(client)
    assert value(now, "model_queue_depth", model="cifar10") == 0
    assert value(now, "model_rows_in_progress", model="cifar10") == 0
    assert value(now, "http_requests_in_flight") == 1  # this scrape
    assert value(now, "model_live_version", model="cifar10") == 1
    assert value(now, "model_live_version", model="iris") == 1
    assert ("model_batch_duration_seconds_count", (("model", "iris"),)) in now


def test_the_histograms_buckets_are_those_the_metrics_page_lists(client):
    """Queries and alerts are written against the `le` labels (the latency alert's 1 s among
    them): docs/operating/metrics.md lists them, and a scrape serves exactly those."""
    page = (ROOT / "docs" / "operating" / "metrics.md").read_text()
    listed = [
        [float(le) for le in found.split(", ")]
        for found in re.findall(r"`(\d[\d., ]+\d)`", page.split("The histograms' buckets")[1])[:2]
    ]
    client.post("/predict/iris", json=GOOD_FEATURES)
    served: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name.endswith("_bucket") and sample.labels["le"] != "+Inf":
                bounds = served.setdefault(family.name, [])
                if float(sample.labels["le"]) not in bounds:
                    bounds.append(float(sample.labels["le"]))
    assert served["http_request_duration_seconds"] == served["model_batch_duration_seconds"] == listed[0]
    assert served["model_batch_size"] == listed[1]
    assert 1.0 in listed[0]  # CifarServingLatencyHigh: p99 above 1 s


def test_a_request_that_fails_unexpectedly_is_counted_500(shared_models, monkeypatch):
    """Starlette answers it from outside every middleware, so the metrics never see a response
    start: counted as the 500 its client gets."""
    with serving(shared_models) as client:
        before = samples(client)
        monkeypatch.setattr(client.app.state.dataplane, "classify", lambda *args: 1 / 0)
        assert client.post("/predict/iris", json=GOOD_FEATURES).status_code == 500
        after = samples(client)
    labels = {"route": "/predict/{model}", "method": "POST", "status": "500", "protocol": "native"}
    key = ("http_requests_total", tuple(sorted(labels.items())))
    assert value(after, "http_requests_total", **labels) - before.get(key, 0.0) == 1


def test_the_app_records_its_workers_resident_memory(client):
    assert value(samples(client), "process_worker_resident_memory_bytes") > 0
