"""
The fixed processor workload engines time for C{benchmark()}: the sum of the primes below a limit,
by trial division, in pure Python. The default limit takes tens of milliseconds on one core of a
current machine (measured: see bench/RESULTS.md), long enough that the figure is the processor's
speed and not timer noise, short enough to run on every engine before a job.

>>> sum_of_primes(30)
129
"""

import time
from typing import Tuple

#: default limit: tens of milliseconds of one core
DEFAULT_LIMIT = 40_000


def sum_of_primes(limit: int) -> int:
    """Sum of the primes below C{limit}, by trial division (deliberately plain CPU work)."""
    total = 0
    for n in range(2, limit):
        d = 2
        prime = True
        while d * d <= n:
            if n % d == 0:
                prime = False
                break
            d += 1
        if prime:
            total += n
    return total


def timed_workload(limit: int = DEFAULT_LIMIT) -> Tuple[float, int]:
    """Run the workload once; return (seconds, result)."""
    start = time.perf_counter()
    result = sum_of_primes(limit)
    return time.perf_counter() - start, result
