"""The landing component: a second landed topic is one YAML file.

The YAML goes in a defs folder of its own (tmp), Dagster's loader reads it into a
``KafkaLanding``, and its sensor runs on a real instance against the real broker: it sees the
new topic's lag per shard, its run requests are launched, the runs land every event with the
declared batch policy and report on the declared asset, and the sensor then has nothing to do.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest
from confluent_kafka.admin import NewTopic

from eventplatform.defs.ingest.component import SHARD_TAG, platform_landing
from eventplatform.defs.resources import platform_resources
from eventplatform.events import EventCodec
from eventplatform.kafka.clients import make_admin, make_producer
from eventplatform.settings import Settings
from eventplatform_tests.helpers import decoded_event
from eventplatform_tests.test_land import clickhouse_count

CLICKS_YAML = """\
type: eventplatform.defs.ingest.component.KafkaLanding
attributes:
  name: clicks
  topic: {topic}
  shards: 2
  sink: events
  priority: -1
  job: land_clicks         # a job of its own (land_events is the platform's, in landing.py)
  sensor_interval_s: 5
  batch:
    max_records: 5
  assets:
    - key: clicks_landed
      group_name: ingest
      kinds: [kafka, parquet, clickhouse]
      deps: [kafka_topics]
      description: The clicks topic, landed with the events.
"""


def _create_topic(settings: Settings, name: str, partitions: int) -> None:
    admin = make_admin(settings.kafka.bootstrap)  # held: the futures need their client
    for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        future.result(30)


def _project(root: Path, monkeypatch: pytest.MonkeyPatch, defs_yaml: str) -> Path:
    """A dg project of its own: dg.toml, a defs module and one folder with a defs.yaml."""
    folder = root / "landing_demo" / "defs" / "clicks"
    folder.mkdir(parents=True)
    (root / "dg.toml").write_text(
        'directory_type = "project"\n[project]\nroot_module = "landing_demo"\n'
        'defs_module = "landing_demo.defs"\n'
    )
    (root / "landing_demo" / "__init__.py").write_text("")
    (root / "landing_demo" / "defs" / "__init__.py").write_text("")
    (folder / "defs.yaml").write_text(defs_yaml)
    monkeypatch.syspath_prepend(str(root))
    return root


def test_a_second_topic_is_a_yaml_file(
    topics: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = topics
    topic = f"{settings.kafka.raw_topic}.clicks"
    _create_topic(settings, topic, 2)
    project = _project(tmp_path / "project", monkeypatch, CLICKS_YAML.format(topic=topic))

    resources = platform_resources(settings)
    folder = dg.load_from_defs_folder(path_within_project=project)
    defs = folder.with_resources(resources)
    sensor = defs.resolve_sensor_def("land_clicks")
    job = defs.resolve_job_def("land_clicks")
    assert sensor.minimum_interval_seconds == 5
    assert defs.resolve_assets_def("clicks_landed").key == dg.AssetKey("clicks_landed")

    producer = make_producer(settings.kafka.bootstrap)
    codec = EventCodec()
    now = datetime.now(UTC)
    for i in range(12):  # 6 per partition, so per shard: batches of 5 and 1
        event = decoded_event("click", "acme", now, event_id=f"click-{i}")
        producer.produce(topic, value=codec.encode(event), partition=i % 2)
    assert producer.flush(10) == 0

    with dg.DagsterInstance.ephemeral() as instance:
        requests = sensor(dg.build_sensor_context(instance=instance, resources=resources))
        assert sorted(r.tags[SHARD_TAG] for r in requests) == [f"{topic}/0", f"{topic}/1"]
        assert {r.tags["dagster/priority"] for r in requests} == {"-1"}
        for request in requests:
            result = job.execute_in_process(
                run_config=request.run_config, instance=instance, tags=request.tags
            )
            assert result.success

        landed = instance.fetch_materializations(dg.AssetKey("clicks_landed"), limit=100).records
        batches = [r.asset_materialization.metadata for r in landed]
        assert sorted(b["rows"].value for b in batches) == [1, 1, 5, 5]  # max_records: 5
        assert {b["topic"].value for b in batches} == {topic}
        # The platform's own landed assets were not reported on: the YAML named its own.
        assert instance.get_latest_materialization_event(dg.AssetKey("events_lake")) is None

        again = sensor(dg.build_sensor_context(instance=instance, resources=resources))
        assert isinstance(again, dg.SkipReason)
    assert clickhouse_count(
        settings, f"SELECT count() FROM {{db}}.events WHERE kafka_topic = '{topic}'"
    ) == [(12,)]


def test_the_platform_sources_follow_the_settings(platform_env: Settings) -> None:
    """raw, overflow and dlq are YAML too; their topic and shards are read from settings."""
    settings = platform_env
    settings.land.raw_shards = 3
    raw = platform_landing("raw").source(settings)
    assert (raw.topic, raw.shards, raw.kind, raw.priority) == (
        settings.kafka.raw_topic,
        3,
        "events",
        0,
    )
    dlq = platform_landing("dlq")
    assert dlq.source(settings).kind == "dead_letters" and dlq.asset_keys == ["dead_letters"]
    overflow = platform_landing("overflow")
    assert overflow.asset_keys == ["events_lake", "events_clickhouse"]
    assert overflow.source(settings).priority == -10
