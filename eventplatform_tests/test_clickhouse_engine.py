"""The embedded engine shared by processes: a lease holds it only while it is used."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa

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


def test_an_insert_leaves_no_file_and_a_killed_inserts_file_is_removed(tmp_path: Path) -> None:
    """Inserts go through a file beside the engine's folder. A process killed mid-insert
    leaves its file (its ``finally`` never runs): the next process to use the engine's folder
    removes it, and leaves alone the files of processes still running."""
    clickhouse = ClickHouse(f"chdb://{tmp_path}/ch", "spooled")
    spool = tmp_path / "ch.inserts"
    with clickhouse.session() as client:
        client.command("CREATE DATABASE IF NOT EXISTS spooled")
        client.command("CREATE TABLE spooled.t (x Int64) ENGINE = MergeTree ORDER BY x")
        clickhouse.insert_arrow(client, "spooled.t", pa.table({"x": pa.array(range(1000))}))
        assert client.query("SELECT count(), sum(x) FROM spooled.t").result_rows == [(1000, 499500)]
    assert list(spool.iterdir()) == []
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    orphan = spool / f"ep-insert-{int(gone.stdout)}-abc.arrows"
    orphan.write_bytes(b"x" * 4096)  # as a killed lander leaves it
    in_use = spool / f"ep-insert-{os.getpid()}-def.arrows"
    in_use.write_bytes(b"y")
    # the next process to use the engine's folder
    opener = f"from eventplatform.clickhouse import ClickHouse; ClickHouse('chdb://{tmp_path}/ch')"
    subprocess.run([sys.executable, "-c", opener], check=True, timeout=120)
    assert sorted(spool.iterdir()) == [in_use]
