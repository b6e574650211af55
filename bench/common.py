"""Shared by the benchmarks: a throwaway broker on free loopback ports, medians, printing."""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from eventplatform.kafka.broker import BrokerConfig, LocalBroker, install_jars
from eventplatform.settings import Settings


@contextmanager
def throwaway_broker() -> Iterator[tuple[str, Path]]:
    """(bootstrap, a temp folder) for one benchmark run; the broker is stopped after."""
    settings = Settings()
    libs = (
        settings.kafka_libs_dir
        if settings.kafka.kafka_home
        else install_jars(settings.kafka_libs_dir)
    )
    with tempfile.TemporaryDirectory(prefix="ep-bench-") as tmp:
        broker = LocalBroker(BrokerConfig.on_free_ports(libs, Path(tmp) / "kafka", heap="1g"))
        broker.start()
        try:
            yield broker.config.bootstrap, Path(tmp)
        finally:
            broker.stop()


def median(values: list[float]) -> float:
    return statistics.median(values)
