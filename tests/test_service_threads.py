"""Thread pools the service sets up for itself."""

from __future__ import annotations

from deployments import serving
from threadpoolctl import threadpool_info, threadpool_limits


def blas_threads() -> set[int]:
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


def test_images_are_decoded_with_one_numpy_blas_thread_per_caller(model_dir):
    threadpool_limits(2, user_api="blas")  # as a fresh process on a multi-core machine has it
    assert blas_threads() == {2}
    with serving(model_dir) as client:
        (in_a_decoder,) = client.portal.call(client.app.state.decoders.map, lambda _: blas_threads(), [None])
        on_the_event_loop = client.portal.call(blas_threads)
    assert in_a_decoder == {1}
    assert on_the_event_loop == {1}
