"""The arithmetic behind the benchmark reports: locust's statistics merged into the figures
we publish, and targets judged from them."""

from __future__ import annotations

import math

from benchmarks.load import LoadRun, Stats, percentile, summarize
from benchmarks.serving import protocols, targets


def entry(
    name: str, times: dict[int, int], failures: int = 0, start: float = 100.0, end: float = 110.0
) -> dict:
    """One request name in locust's --json-file format (its keys are strings there)."""
    return {
        "name": name,
        "num_requests": sum(times.values()),
        "num_failures": failures,
        "start_time": start,
        "last_request_timestamp": end,
        "response_times": {str(ms): count for ms, count in times.items()},
    }


def test_percentile_is_nearest_rank_over_the_histogram():
    times = {1: 50, 2: 45, 10: 4, 80: 1}
    assert percentile(times, 0.50) == 1
    assert percentile(times, 0.95) == 2
    assert percentile(times, 0.99) == 10
    assert percentile(times, 1.00) == 80
    assert math.isnan(percentile({}, 0.5))


def test_summarize_merges_names_over_their_common_time_span():
    total = summarize(
        entry("/a", {5: 30}, failures=1, start=100, end=105), entry("/b", {20: 10}, start=101, end=110)
    )
    assert (total.requests, total.failures) == (40, 1)
    assert total.requests_per_s == 40 / 10
    assert (total.p50_ms, total.p99_ms) == (5, 20)


def run(
    requests_per_s: float, p50_ms: float = 10, p99_ms: float = 50, failures: int = 0, requests: int = 100
) -> LoadRun:
    stats = Stats(requests, failures, requests_per_s, p50_ms, p50_ms, p99_ms)
    return LoadRun(1, 10, 11, 0, stats, {}, 1.0, 1.0, "unused")


def verdicts(runs, image_ceiling=100.0) -> list[str]:
    return [t["verdict"] for t in targets(runs, image_ceiling)]


def test_targets_not_run_are_not_measured_rather_than_failed():
    assert verdicts({("service", "image", 1): run(50)}) == [
        "not measured",
        "not measured",
        "not measured",
        "PASS",
        "not measured",
        "PASS",
    ]


def test_targets_judge_the_service_against_baseline_ceiling_and_latency():
    runs = {
        ("service", "image", 32): run(60),
        ("baseline", "image", 32): run(2),
        ("service", "image", 8): run(50, p99_ms=150),
        ("service", "image", 1): run(70, p50_ms=12),
        ("service", "iris", 1): run(400, p50_ms=4, failures=1),
    }
    assert verdicts(runs) == ["PASS", "PASS", "FAIL", "PASS", "FAIL", "FAIL"]
    assert verdicts(runs, image_ceiling=200) == ["PASS", "FAIL", "FAIL", "PASS", "FAIL", "FAIL"]


def test_a_service_run_that_completed_nothing_fails_the_failure_target():
    runs = {("service", "image", 1): run(0, p50_ms=math.nan, p99_ms=math.nan, requests=0)}
    assert verdicts(runs) == ["not measured", "not measured", "not measured", "FAIL", "not measured", "FAIL"]


def test_v2_throughput_is_judged_against_predict_image_at_32_users():
    assert (
        protocols({("service", "image", 32): run(100), ("service", "v2", 32): run(95)})[0]["verdict"]
        == "PASS"
    )
    assert (
        protocols({("service", "image", 32): run(100), ("service", "v2", 32): run(85)})[0]["verdict"]
        == "FAIL"
    )
    assert protocols({("service", "image", 32): run(100)})[0]["verdict"] == "not measured"
    assert (
        protocols({("service", "image", 32): run(100), ("service", "v2", 32): run(95)})[0][
            "over_predict_image"
        ]
        == 0.95
    )
