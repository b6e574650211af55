"""Collector metrics in the Prometheus text format (no client library needed for this few)."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
        self.gauges: dict[str, float] = {}
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        # Histograms kept elsewhere in the same buckets (the native delivery tally), added
        # in at render: (counts, the last +Inf; sum in seconds).
        self._latency_sources: list[Callable[[], tuple[list[int], float]]] = []

    def add_latency_source(self, source: Callable[[], tuple[list[int], float]]) -> None:
        self._latency_sources.append(source)

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        with self._lock:
            self.counters[(name, tuple(sorted(labels.items())))] += value

    def get(self, name: str, **labels: str) -> float:
        return self.counters.get((name, tuple(sorted(labels.items()))), 0.0)

    def set_gauge(self, name: str, value: float) -> None:
        self.gauges[name] = value

    def observe_produce_latency(self, seconds: float) -> None:
        with self._lock:
            self.latency_sum += seconds
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    self.latency_counts[i] += 1
                    break
            else:
                self.latency_counts[-1] += 1

    def render(self) -> str:
        lines = []
        with self._lock:
            names = sorted({name for name, _ in self.counters})
            for name in names:
                lines.append(f"# TYPE {name} counter")
                for (n, labels), value in sorted(self.counters.items()):
                    if n == name:
                        label_text = ",".join(f'{k}="{v}"' for k, v in labels)
                        lines.append(
                            f"{name}{{{label_text}}} {value:g}" if labels else f"{name} {value:g}"
                        )
            for name, value in sorted(self.gauges.items()):
                lines.append(f"# TYPE {name} gauge")
                lines.append(f"{name} {value:g}")
            counts, total = list(self.latency_counts), self.latency_sum
            for source in self._latency_sources:
                more, more_sum = source()
                counts = [a + b for a, b in zip(counts, more, strict=True)]
                total += more_sum
            lines.append("# TYPE collector_produce_latency_seconds histogram")
            cumulative = 0
            for bound, count in zip(LATENCY_BUCKETS, counts, strict=False):
                cumulative += count
                lines.append(
                    f'collector_produce_latency_seconds_bucket{{le="{bound}"}} {cumulative}'
                )
            cumulative += counts[-1]
            lines.append(f'collector_produce_latency_seconds_bucket{{le="+Inf"}} {cumulative}')
            lines.append(f"collector_produce_latency_seconds_sum {total:g}")
            lines.append(f"collector_produce_latency_seconds_count {cumulative}")
        return "\n".join(lines) + "\n"
