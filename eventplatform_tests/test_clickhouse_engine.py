"""The embedded engine shared by processes: a lease holds it only while it is used."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from eventplatform.clickhouse import ClickHouse, engine_holder

# Takes a lease, uses the engine once, then waits on "something else" (as a landing run
# waits for a Kafka commit) without calling renew(); then uses the engine again.
LEASEHOLDER = """
import sys, time
from eventplatform.clickhouse import ClickHouse
ch = ClickHouse(sys.argv[1])
with ch.lease():
    with ch.session() as client:
        client.command("CREATE TABLE default.notes (n UInt32) ENGINE = MergeTree ORDER BY n")
        client.command("INSERT INTO default.notes VALUES (1)")
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
    with ch.session() as client:
        print("rows", client.command("SELECT count() FROM default.notes"), flush=True)
    print("opens", ch.opens, flush=True)
"""


def test_a_leaseholder_waiting_on_something_else_hands_the_engine_over(tmp_path: Path) -> None:
    dsn = f"chdb://{tmp_path / 'ch'}"
    holder = subprocess.Popen(
        [sys.executable, "-c", LEASEHOLDER, dsn, "1.5"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "holding"
        assert engine_holder(dsn) == holder.pid

        asked = time.monotonic()
        with ClickHouse(dsn).session() as client:
            waited = time.monotonic() - asked
            assert engine_holder(dsn) != holder.pid
            client.command("INSERT INTO default.notes VALUES (2)")
        out, _ = holder.communicate(timeout=60)
        # Our row is in the holder's second session: we had the engine while it waited (1.5 s)
        # on something else, not after its lease ended; then it reopened the engine.
        assert out.split("\n")[:2] == ["rows 2", "opens 2"], f"{out} (we waited {waited:.1f}s)"
    finally:
        if holder.poll() is None:
            holder.kill()
