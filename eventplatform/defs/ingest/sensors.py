"""The land sensors, by source name: what the landing component builds from its YAML.

The sensors are made by ``KafkaLanding`` (``component.py``) from ``landed/<name>/defs.yaml``;
this module keeps the short way to one of the platform's (tests, scripts).
"""

from dagster import SensorDefinition

from eventplatform.defs.ingest.component import IN_FLIGHT, SHARD_TAG, platform_landing

__all__ = ["IN_FLIGHT", "SHARD_TAG", "land_sensor"]


def land_sensor(source_name: str, interval_s: int) -> SensorDefinition:
    """The sensor ``land_<source_name>`` (raw, overflow or dlq), as its YAML declares it."""
    return platform_landing(source_name).sensor(interval_s)
