"""Helpers shared by the benchmarks in `bench/`: logging, machine/date info, thread
limits, timers and JSON output.

Timings on a shared machine are noisy, so benchmarks should report ratios against a
baseline measured in the same run, and measure in interleaved rounds keeping the
best round of each method (`best_of_rounds`): the fastest round is the one least
disturbed by other processes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from offline.export import json_safe


def setup_logging(verbose: bool = False) -> None:
    """INFO-level progress lines with a timestamp on stderr."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def utc_now() -> str:
    """The current date and time as `YYYY-MM-DD HH:MM UTC`."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine_info(packages: Iterable[str] = ("numpy",)) -> dict[str, Any]:
    """What a reader needs to judge the numbers: CPU, cores usable by this process,
    load at start, memory, OS, Python and the versions of `packages` (if importable)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            module = __import__(name)
            versions[name] = getattr(module, "__version__", "unknown")
        except ImportError:
            versions[name] = None
    return {
        "cpu": _cpu_model(),
        "cores": usable,
        "load_avg_1_5_15": load,
        "mem_gib": _mem_total_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "packages": versions,
    }


def limit_threads(n: int) -> None:
    """Caps BLAS/OpenMP threads of numpy (via threadpoolctl, when installed) and of
    FAISS (when imported) at n for the rest of the process."""
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:  # the env vars set before numpy's import are the fallback
        pass
    if "faiss" in sys.modules:
        sys.modules["faiss"].omp_set_num_threads(n)


class Timer:
    """`with Timer() as t: ...` then `t.seconds` (perf_counter wall time)."""

    def __enter__(self) -> "Timer":
        self.seconds = math.nan
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start


def time_per_call(fn: Callable[[int], object], n_inputs: int, *, min_time: float, min_calls: int = 1) -> float:
    """Seconds per call of fn(i), cycling i over range(n_inputs) until at least
    `min_time` seconds and `min_calls` calls have passed."""
    calls = 0
    start = time.perf_counter()
    while True:
        for i in range(n_inputs):
            fn(i)
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time and calls >= min_calls:
                return elapsed / calls


def best_of_rounds(fns: Mapping[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Runs every fn (each returning a time) once per round, methods interleaved, and
    keeps each one's smallest time: background load then hits all methods alike."""
    best = {name: math.inf for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            best[name] = min(best[name], fn())
    return best


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def write_json(result: Any, path: Path) -> None:
    """Writes `result` as indented strict JSON (numpy values converted, NaN -> null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = json.loads(json.dumps(result, default=_json_default))  # numpy -> python; NaN survives
    path.write_text(json.dumps(json_safe(plain), indent=2, allow_nan=False) + "\n")
