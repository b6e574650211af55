"""The ClickHouse mirror of the marts, for dashboards: one MergeTree table per mart.

Tables are created from the mart's columns (types from its DuckDB output), partitioned by
``event_date``. A day is replaced atomically: its rows go to a staging table, then
``ALTER TABLE ... REPLACE PARTITION`` swaps them in, so a dashboard never sees the day half
written and a rebuild never doubles it.
"""

from __future__ import annotations

import uuid
from datetime import date
from pathlib import Path

import pyarrow as pa

from eventplatform.clickhouse import ClickHouse
from eventplatform.marts.catalog import Mart

_TYPES = {
    pa.string(): "String",
    pa.large_string(): "String",
    pa.int64(): "Int64",
    pa.int32(): "Int32",
    pa.float64(): "Float64",
    pa.bool_(): "Bool",
}


def clickhouse_type(arrow_type: pa.DataType, nullable: bool) -> str:
    if pa.types.is_date32(arrow_type):
        base = "Date"
    elif arrow_type in _TYPES:
        base = _TYPES[arrow_type]
    else:
        raise TypeError(f"no ClickHouse type for {arrow_type}: cast it in the mart's SQL")
    return f"Nullable({base})" if nullable else base


def create_table_sql(database: str, mart: Mart, schema: pa.Schema) -> str:
    columns = []
    for f in schema:
        nullable = f.name != "event_date"
        comment = mart.columns.get(f.name, "").replace("\\", "\\\\").replace("'", "\\'")
        columns.append(f"    `{f.name}` {clickhouse_type(f.type, nullable)} COMMENT '{comment}'")
    order = ", ".join(f"`{g}`" for g in mart.grain)
    description = mart.description.replace("\\", "\\\\").replace("'", "\\'")
    return (
        f"CREATE TABLE IF NOT EXISTS {database}.{mart.name}\n(\n"
        + ",\n".join(columns)
        + f"\n)\nENGINE = MergeTree\nPARTITION BY event_date\nORDER BY ({order})\n"
        f"SETTINGS allow_nullable_key = 1\nCOMMENT '{description}'"
    )


def mirror_day(
    clickhouse: ClickHouse, mart: Mart, day: date, table: pa.Table, exported: Path | None = None
) -> None:
    """Replace the day's partition of the mart's ClickHouse table with ``table``.

    With the embedded engine and the day's Parquet export (``exported``, the same rows), the
    engine reads the file itself: about half the CPU of sending it the Arrow table."""
    db = clickhouse.database
    target = f"{db}.{mart.name}"
    stage = f"{db}.{mart.name}__stage_{day.strftime('%Y%m%d')}_{uuid.uuid4().hex[:8]}"
    partition = day.strftime("%Y%m%d")
    with clickhouse.session() as client:
        client.command(f"CREATE DATABASE IF NOT EXISTS {db}")
        client.command(create_table_sql(db, mart, table.schema))
        existing = [
            name
            for (name,) in client.query(
                "SELECT name FROM system.columns WHERE database = %(db)s AND table = %(t)s "
                "ORDER BY position",
                parameters={"db": db, "t": mart.name},
            ).result_rows
        ]
        if existing != table.schema.names:  # the mart's columns changed: start its table anew
            client.command(f"DROP TABLE {target}")
            client.command(create_table_sql(db, mart, table.schema))
        client.command(f"DROP TABLE IF EXISTS {stage}")
        client.command(f"CREATE TABLE {stage} AS {target}")
        try:
            if table.num_rows:
                if clickhouse.embedded and exported is not None:
                    columns = ", ".join(f"`{name}`" for name in table.schema.names)
                    path = str(exported).replace("\\", "\\\\").replace("'", "\\'")
                    client.command(
                        f"INSERT INTO {stage} ({columns}) SELECT {columns} "
                        f"FROM file('{path}', Parquet)"
                    )
                else:
                    client.insert_arrow(stage, table)
                client.command(
                    f"ALTER TABLE {target} REPLACE PARTITION ID '{partition}' FROM {stage}"
                )
            else:
                client.command(f"ALTER TABLE {target} DROP PARTITION ID '{partition}'")
        finally:
            client.command(f"DROP TABLE IF EXISTS {stage}")


def partition_totals(
    clickhouse: ClickHouse, mart: Mart, day: date, columns: list[str]
) -> tuple[int, dict[str, float]]:
    """Row count and column sums of the mirrored day (to compare with the DuckDB build)."""
    sums = ", ".join(f"toFloat64(sum(`{c}`))" for c in columns)
    with clickhouse.session() as client:
        row = client.query(
            f"SELECT count(){', ' + sums if sums else ''} FROM {clickhouse.database}.{mart.name} "
            "WHERE event_date = %(d)s",
            parameters={"d": day},
        ).result_rows[0]
    return int(row[0]), {c: float(v or 0) for c, v in zip(columns, row[1:], strict=True)}
