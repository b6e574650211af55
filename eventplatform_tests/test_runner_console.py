"""`make run`'s console: a child's output goes whole to its file under <data_dir>/logs, and
only what needs the user (warnings, errors, a paced demo progress) reaches the console."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path
from types import SimpleNamespace

from eventplatform.runner import DEMO_PROGRESS_EVERY_S, Platform, console_filter, log_dir
from eventplatform.settings import Settings

CHATTY = r"""
import sys
print("\x1b[32m2026-12-02 15:00:00 +0000\x1b[0m - dagster - \x1b[34mINFO\x1b[0m - tick")
print("INFO:     Started server process [42]")
print("\x1b[32m2026-12-02 15:00:01 +0000\x1b[0m - dagster - \x1b[33mWARNING\x1b[0m - slow tick")
print("ERROR:     eventplatform.collect: the broker is unreachable", file=sys.stderr)
"""


def test_a_childs_output_goes_to_its_file_and_only_warnings_to_the_console(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("EP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    settings = Settings()
    shown: list[str] = []
    platform = Platform(settings, log=shown.append)
    service = platform.spawn("chatty", [sys.executable, "-c", CHATTY], cwd=tmp_path)
    assert service.process.wait(timeout=30) == 0
    platform.stop()  # joins the pump: every line is in the file
    assert service.log_file == log_dir(settings) / "chatty.log"
    logged = service.log_file.read_text().splitlines()
    assert logged[0].startswith("--- ") and "chatty" in logged[0]
    assert logged[1:] == [
        "2026-12-02 15:00:00 +0000 - dagster - INFO - tick",  # colours stripped
        "INFO:     Started server process [42]",
        "2026-12-02 15:00:01 +0000 - dagster - WARNING - slow tick",
        "ERROR:     eventplatform.collect: the broker is unreachable",
    ]
    assert shown == [
        "chatty: 2026-12-02 15:00:01 +0000 - dagster - WARNING - slow tick",
        "chatty: ERROR:     eventplatform.collect: the broker is unreachable",
    ]


def test_the_demo_shows_one_progress_line_a_minute_and_everything_else() -> None:
    keep = console_filter("simulator")
    lines = [
        f"[{t:5d}s] sent {t * 100} events (x1.0 of the average rate now)" for t in range(0, 130, 5)
    ]
    shown = [line for line in lines if keep(line) is not None]
    assert [line.split("]")[0] for line in shown] == [
        f"[{t:5d}s" for t in range(0, 130, DEMO_PROGRESS_EVERY_S)
    ]
    assert keep("collector unreachable: connection refused") is not None


def test_the_dagster_instance_exists_before_its_two_processes_start(
    tmp_path: Path, monkeypatch
) -> None:
    """The webserver and the daemon start on a fresh DAGSTER_HOME at once; if each creates the
    instance's SQLite storage, both may stamp its schema version and Dagster then refuses the
    instance. The storage is made once, with one version, before either is spawned (the two
    processes are only recorded here: this is about what exists when they start)."""
    monkeypatch.setenv("EP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    settings = Settings()
    platform = Platform(settings, log=lambda line: None)
    versions_at_spawn: list[list[tuple]] = []

    def record(name: str, args: list[str], cwd: Path = tmp_path) -> SimpleNamespace:
        db = settings.dagster_home / "schedules" / "schedules.db"
        with sqlite3.connect(db) as con:
            versions_at_spawn.append(con.execute("SELECT * FROM alembic_version").fetchall())
        return SimpleNamespace(log_file=log_dir(settings) / f"{name}.log")

    monkeypatch.setattr(platform, "spawn", record)
    platform.start_dagster()
    assert len(versions_at_spawn) == 2
    assert all(len(v) == 1 and v == versions_at_spawn[0] for v in versions_at_spawn)
    assert "dagster instance migrate (exit 0)" in (log_dir(settings) / "dagster.log").read_text()
