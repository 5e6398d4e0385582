"""The serving benchmark's protocol comparison: v2 binary infer against /predict/image."""

from __future__ import annotations

from test_benchmarks import run

from benchmarks.serving import protocols


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
