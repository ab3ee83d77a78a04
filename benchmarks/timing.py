"""Timing shared by the CPU benchmarks."""

import statistics
import time


def interleaved_medians_ms(fns: dict, rounds: int) -> dict[str, float]:
    """Median milliseconds of each no-argument callable, after one warm-up call each.

    The callables are called once each in turn per round, so that a shared machine whose speed drifts during
    the run slows all of them alike (timing each in its own block would bias the comparison).
    """
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}
