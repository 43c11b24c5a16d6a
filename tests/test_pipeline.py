"""The evaluation pipeline's writer thread and read-ahead: case order, failures, progress lines."""

import threading
import time

import pytest

from swinbob.infer.evaluate import Pipeline, prefetch


def test_writes_run_in_a_thread_one_case_behind_and_are_recorded_in_case_order():
    pipeline, recorded, threads = Pipeline(3, threaded=True), [], []

    def work(n):
        def run():
            threads.append(threading.current_thread().name)
            time.sleep(0.05 * (3 - n))  # later cases finish their writes faster
            if n == 1:
                raise OSError(28, "No space left on device")
            return n
        return run

    for n in range(3):
        pipeline.submit(work(n), lambda r: (recorded.append(("done", r)), pipeline.advance()),
                        lambda e: (recorded.append(("failed", str(e))), pipeline.advance()))
        assert len(recorded) == n  # the previous case is recorded when the next is handed over
    pipeline.drain()
    pipeline.close()
    assert recorded == [("done", 0), ("failed", "[Errno 28] No space left on device"), ("done", 2)]
    assert set(threads) == {"swinbob-writer_0"}
    line = pipeline.closing_line({"evaluated": 2, "failed": 1, "skipped": 4}, 6.0)
    assert line.startswith("2 case(s) done, 1 failed, 4 skipped before, in 6s (0.5 cases/s")


def test_eta_counts_down_from_the_mean_time_per_case(monkeypatch):
    clock = iter([100.0, 110.0, 130.0])
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    pipeline = Pipeline(4, threaded=False)
    pipeline.advance()
    assert pipeline.eta() == ", ETA 30s"  # 10 s for 1 case, 3 to go
    pipeline.advance()
    assert pipeline.eta() == ", ETA 30s"  # 30 s for 2 cases, 2 to go
    pipeline.advance()
    pipeline.advance()
    assert pipeline.eta() == ""


def test_read_ahead_keeps_order_and_raises_the_loader_s_error():
    assert list(prefetch(iter(range(5)))) == list(range(5))

    def broken():
        yield 1
        raise RuntimeError("loader died")

    items = prefetch(broken())
    assert next(items) == 1
    with pytest.raises(RuntimeError, match="loader died"):
        next(items)
