"""The layers point one way: the domain packages never import the orchestrator.

``eventplatform/defs`` wires the domain code into Dagster; the domain packages know nothing
of Dagster, so they run from the CLI, a test or another orchestrator. ``events`` and
``kafka`` are the bottom: they import no domain package above them. Every import statement
of every module counts, including those inside functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from eventplatform.settings import REPO_ROOT

PACKAGE = REPO_ROOT / "eventplatform"
DOMAIN = ["events", "kafka", "collect", "enrich", "land", "budgets", "quality", "marts", "simulate"]
BOTTOM = ["events", "kafka"]
ABOVE_BOTTOM = [p for p in DOMAIN if p not in BOTTOM]


def module_name(path: Path, root: Path) -> str:
    """``root/land/lander.py`` -> ``eventplatform.land.lander`` (``root`` is the package)."""
    parts = (root.name, *path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; ``from a import b`` gives a and a.b)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the module's package
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def is_under(module: str, prefix: str) -> bool:
    """``prefix`` or a module inside it; ``dagster`` also covers its libraries
    (``dagster_postgres``, ``dagster_k8s``, ...)."""
    if prefix == "dagster" and module.split(".")[0].startswith("dagster_"):
        return True
    return module == prefix or module.startswith(prefix + ".")


def violations(root: Path, packages: list[str], forbidden: list[str]) -> list[str]:
    """``file: imports module`` for each import, in ``packages`` of the package at ``root``,
    of a module under one of ``forbidden``."""
    found = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            modules = imported_modules(path, root)
            hits = [m for m in modules if any(is_under(m, f) for f in forbidden)]
            for module in sorted(hits):
                if not any(module.startswith(other + ".") for other in hits):  # a, not a.b too
                    found.append(f"{path.relative_to(root.parent)}: imports {module}")
    return found


UPWARD = ["dagster", "eventplatform.defs", "eventplatform.definitions"]


def test_the_domain_packages_import_neither_dagster_nor_defs() -> None:
    files = [p for pkg in DOMAIN for p in (PACKAGE / pkg).rglob("*.py")]
    assert len(files) > 40, "the walk found too few modules: is PACKAGE right?"
    assert violations(PACKAGE, DOMAIN, UPWARD) == []


def test_events_and_kafka_import_no_domain_package_above_them() -> None:
    above = [f"eventplatform.{p}" for p in ABOVE_BOTTOM]
    assert violations(PACKAGE, BOTTOM, [*above, *UPWARD]) == []


@pytest.mark.parametrize(
    "source",
    [
        "import dagster",
        "import dagster as dg",
        "from dagster import asset",
        "import dagster_postgres",
        "def f():\n    from eventplatform.defs.marts.backfill import materialize_range",
        "from eventplatform.definitions import build_defs",
        "from eventplatform import defs",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from dagster import Definitions",
        "from ...defs import resources",  # in eventplatform/land/x/: eventplatform.defs
    ],
)
def test_the_walk_sees_each_way_of_importing_upward(source: str, tmp_path: Path) -> None:
    """The rule is only as good as the walk: each spelling of an upward import is caught."""
    root = tmp_path / "eventplatform"
    (root / "land" / "x").mkdir(parents=True)
    (root / "land" / "x" / "y.py").write_text(source + "\n")
    (root / "land" / "fine.py").write_text(
        "from eventplatform.kafka.lag import consumer_lag\nfrom .x import y\nimport dagsterish\n"
    )
    assert [v.split(":")[0] for v in violations(root, ["land"], UPWARD)] == [
        "eventplatform/land/x/y.py"
    ], source


def test_landing_imports_none_of_the_packages_that_read_what_it_lands() -> None:
    """Consumer lag lives in ``kafka``, so landing does not reach into ``quality`` for it."""
    readers = ["collect", "budgets", "quality", "marts", "simulate"]
    assert violations(PACKAGE, ["land"], [f"eventplatform.{p}" for p in readers]) == []


def test_marts_build_reports_the_run_it_is_handed_and_needs_one_without_no_dagster(
    mart_env,
) -> None:
    """The inversion that keeps marts/ below defs/: `marts build` runs whatever
    ``RecordedBackfill`` the composition root hands it, and says what to do without one."""
    from datetime import date

    from click.testing import CliRunner

    from eventplatform.marts.backfill import BackfillRun, BuiltPartition, FailedCheck
    from eventplatform.marts.cli import marts_group

    asked: list[tuple[date, date, list[str] | None]] = []

    def recorded(first: date, last: date, names: list[str] | None) -> BackfillRun:
        asked.append((first, last, names))
        return BackfillRun(
            "run-1",
            True,
            [BuiltPartition("2026-11-16", "m", 2), BuiltPartition("2026-11-17", "m", 1)],
            [FailedCheck("reconciles_with_events", "m", "1 of 4 figures differ")],
        )

    args = ["build", "--start", "2026-11-16", "--end", "2026-11-17", "--mart", "m"]
    result = CliRunner().invoke(marts_group(recorded), args)
    assert asked == [(date(2026, 11, 16), date(2026, 11, 17), ["m"])]
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "2026-11-16 m: 2 rows",
        "2026-11-17 m: 1 rows",
        "check reconciles_with_events FAILED for m: 1 of 4 figures differ",
        "built 2026-11-16..2026-11-17 in run run-1: reconciliation failed",
    ]
    alone = CliRunner().invoke(marts_group(), args)
    assert alone.exit_code == 2 and "--no-dagster" in alone.output


def test_no_definitions_module_reads_the_settings_at_import() -> None:
    """Settings are read when Dagster loads the location (``@dg.definitions``), so a test or a
    deployment that sets the environment after importing still gets its own. A fresh
    interpreter imports every module of the code location with ``get_settings`` replaced by
    one that fails."""
    script = (
        "import pkgutil, importlib, eventplatform.settings as s\n"
        "def refuse(): raise SystemExit('settings read at import')\n"
        "s.get_settings = refuse\n"
        "import eventplatform.defs as d\n"
        "names = [m.name for m in pkgutil.walk_packages(d.__path__, 'eventplatform.defs.')]\n"
        "names.append('eventplatform.definitions')\n"
        "for name in names: importlib.import_module(name)\n"
        "print(len(names))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout) >= 15  # every module of defs/ was imported
