"""Test helpers: decoded events as the collector makes them, landed as the landing job does."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from eventplatform.clickhouse import ClickHouse
from eventplatform.events import EventValidator
from eventplatform.events.arrow import events_to_arrow
from eventplatform.events.examples import example_event
from eventplatform.land.spend import record_spend

_validator = EventValidator()


def decoded_event(
    event_type: str,
    customer: str,
    received: datetime,
    *,
    payload: dict[str, Any] | None = None,
    **envelope: Any,
) -> dict[str, Any]:
    """A contract datum as the collector would produce it (validated, stamped). It happened
    when it was received unless ``event_ts`` says otherwise (never the example's fixed date:
    "spend today" would then depend on the day the tests run)."""
    envelope.setdefault("event_ts", int(received.timestamp() * 1000))
    json_event = example_event(event_type, **envelope)
    if payload:
        json_event["payload"].update(payload)
    datum, errors = _validator.validate(json_event, customer, int(received.timestamp() * 1000))
    assert not errors, errors
    return datum


def land_rows(
    clickhouse: ClickHouse, events: list[dict], token: str, landed: datetime | None = None
) -> None:
    """Insert events the way the landing job does: one Arrow batch, one dedup token, and
    its spend recorded in the same session (``land/spend.py``)."""
    landed_ms = int(landed.timestamp() * 1000) if landed else 0
    table = events_to_arrow(events, "events.raw", 0, list(range(len(events))), landed_ms)
    with clickhouse.session() as client:
        client.insert_arrow(
            f"{clickhouse.database}.events", table, settings={"insert_deduplication_token": token}
        )
        record_spend(client, clickhouse.database, table, token)
