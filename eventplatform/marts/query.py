"""Ad-hoc SQL for analysts: on the DuckDB warehouse (read-only) or on ClickHouse."""

from __future__ import annotations

import csv
import io
from datetime import date, datetime
from pathlib import Path

import duckdb
import pyarrow as pa

from eventplatform.clickhouse import ClickHouse


def query_warehouse(warehouse: Path, sql: str) -> pa.Table:
    """Run ``sql`` on the warehouse file, opened read-only (the lake's Parquet is reachable
    too, e.g. ``read_parquet('.data/lake/marts/*/*/*.parquet')``)."""
    if not warehouse.exists():
        raise FileNotFoundError(
            f"no warehouse at {warehouse} yet: build the marts first (eventplatform marts build)"
        )
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        relation = con.sql(sql)
        return relation.to_arrow_table() if relation is not None else pa.table({})
    finally:
        con.close()


def query_clickhouse(clickhouse: ClickHouse, sql: str) -> pa.Table:
    """Run ``sql`` on ClickHouse with the platform's database as the default one."""
    with clickhouse.session() as client:
        client.database = clickhouse.database
        return client.query_arrow(sql)


def _cell(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) < 1e15 else repr(value)
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    return str(value)


def format_table(table: pa.Table, max_rows: int = 100) -> str:
    """A plain aligned text table (numbers right-aligned) with a row count footer."""
    names = table.column_names
    rows = table.slice(0, max_rows).to_pylist()
    cells = [[_cell(r[n]) for n in names] for r in rows]
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]
    numeric = [
        pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_decimal(f.type)
        for f in table.schema
    ]

    def line(values: list[str]) -> str:
        return " | ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    out = [line(names), "-+-".join("-" * w for w in widths)]
    out += [line(c) for c in cells]
    more = f" (first {max_rows} shown)" if table.num_rows > max_rows else ""
    out.append(f"({table.num_rows} row{'s' if table.num_rows != 1 else ''}{more})")
    return "\n".join(out)


def to_csv(table: pa.Table) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.column_names)
    for row in table.to_pylist():
        writer.writerow(["" if v is None else v for v in row.values()])
    return buffer.getvalue()
