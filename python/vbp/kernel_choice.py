"""Pick the faster of two implementations of one op per input shape, by timing its first calls.

The CPU compact MLP has two paths, oneDNN matmuls with fused epilogues and ATen's GEMMs; which is faster
depends on the CPU (oneDNN beats MKL's fp32 GEMM on AMD EPYC, not always on Intel Xeon) and on the shape. A
`MeasuredChoice` times both, in turn, the first time it sees a shape, and uses the faster one from then on,
so that the op is never slower than eager on any CPU. Both compute the same function.
"""

import time
from typing import Callable, Hashable

ROUNDS = 3  # calls of each implementation, in turn, on the first input of a shape


class MeasuredChoice:
    """call(key, *args): the faster of `fast` and `baseline` for `key`, measured on the first call with that key
    (the minimum of ROUNDS calls each, taken in turn). Not for code that torch.compile traces (it times)."""

    def __init__(self, fast: Callable, baseline: Callable):
        self.fast, self.baseline = fast, baseline
        self.choice: dict[Hashable, Callable] = {}

    def __call__(self, key: Hashable, *args):
        chosen = self.choice.get(key)
        if chosen is None:
            chosen = self.choice[key] = self._measure(args)
        return chosen(*args)

    def _measure(self, args) -> Callable:
        best = {self.fast: float("inf"), self.baseline: float("inf")}
        for _ in range(ROUNDS):
            for fn in best:
                start = time.perf_counter()
                fn(*args)
                best[fn] = min(best[fn], time.perf_counter() - start)
        return min(best, key=best.get)
