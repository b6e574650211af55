"""The sessions mart computed in native code, with the same rows as its SQL.

``sql/marts/sessions_daily.sql`` stays the mart's definition (its columns, descriptions and
reconciliations) and the reference: ``eventplatform_tests/test_marts_native.py`` compares the
two row for row. The SQL joins every event to its user's visit and groups the day by a text
key with eight string arg_min/arg_max: over a third of a day's build. Here the day's columns
are read once, ``eventplatform_avro.sessions_of_day`` (Rust,
``native/avro_columnar/src/sessions.rs``) groups them and returns row numbers and figures, and
the strings are taken from the columns already read. Times are written as the SQL's strftime
writes them (``format_ms_times``), and the length from whole milliseconds is exactly the
SQL's rounded difference.

The native path runs only for the SQL it was written for (``IMPLEMENTS``, the hash of the
mart's SQL): a changed definition is built by its SQL until this is brought in line.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import date

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from eventplatform_avro import SESSION_FIGURES, format_ms_times, sessions_of_day

from eventplatform.marts.catalog import Mart

SESSIONS_MART = "sessions_daily"
# A mart's rows for a day from the connection's relations; None: a day it does not take.
NativeBuild = Callable[[duckdb.DuckDBPyConnection, date], pa.Table | None]
# sha256 of sql/marts/sessions_daily.sql as the catalog reads it (``Mart.sql``).
IMPLEMENTS = "6dcfbbbb012e570af79f96d12c2d0f579395ef64c6d1dda3c6b1493faaacb710"
# What sessions_of_day returns per session, in order (sessions.rs, Session::output): rows
# are the day's row numbers, -1 for none; visit 0 is a session keyed by its session_id.
FIGURES = (
    "key_row",
    "visit",
    "user_row",
    "min_ts",
    "max_ts",
    "events",
    "pages",
    "entry_url_row",
    "exit_url_row",
    "utm_source_row",
    "referrer_class_row",
    "country_row",
    "device_class_row",
)
if len(FIGURES) != SESSION_FIGURES:  # an installed crate older or newer than this file
    raise ImportError(
        f"eventplatform_avro returns {SESSION_FIGURES} figures a session, not {len(FIGURES)}"
    )
_EPOCH = date(1970, 1, 1)
_ONE_BATCH = 1 << 40
GAP_MS = 30 * 60 * 1000  # the idle time that starts a user's next visit

# The day read once. The flags' bits are sessions.rs's (HAS_URL ... PAGE_VIEW).
_READ = """
SELECT
    customer_id, session_id, user_id, epoch_ms(event_ts) AS ts,
    ((url IS NOT NULL)::UTINYINT
        | ((utm_source IS NOT NULL)::UTINYINT << 1)
        | ((referrer_class IS NOT NULL)::UTINYINT << 2)
        | ((geo_country IS NOT NULL)::UTINYINT << 3)
        | ((device_class IS NOT NULL)::UTINYINT << 4)
        | ((event_type = 'page_view')::UTINYINT << 5))::UTINYINT AS flags,
    url, utm_source, referrer_class, geo_country, device_class
FROM events
WHERE session_id IS NOT NULL OR user_id IS NOT NULL
"""


def sql_hash(sql: str) -> str:
    return hashlib.sha256(sql.encode()).hexdigest()


def native_build(mart: Mart) -> NativeBuild | None:
    """The native build of this mart as it is defined now, if there is one."""
    if mart.name == SESSIONS_MART and sql_hash(mart.sql) == IMPLEMENTS:
        return sessions_daily
    return None


def sessions_daily(con: duckdb.DuckDBPyConnection, event_date: date) -> pa.Table | None:
    """The mart's rows for the day of ``con``'s ``events`` (``build.day_events``), in the
    SQL's order; None when the day cannot be taken this way (a string column of 2 GiB or
    more, 2^32 rows), and then the SQL builds it."""
    try:
        # in one batch: combining eleven chunks of each column cost 1.3 s of page faults
        day = con.sql(_READ).to_arrow_table(batch_size=_ONE_BATCH)
        columns = {name: _one_array(day[name]) for name in day.column_names}
    except (duckdb.InvalidInputException, pa.ArrowInvalid, pa.ArrowCapacityError):
        return None  # a string column of 2 GiB or more: int32 offsets do not reach
    if day.num_rows >= 2**32 or columns["ts"].null_count:
        return None
    keys = [_buffers(columns[name]) for name in ("customer_id", "session_id", "user_id")]
    buffer, count = sessions_of_day(
        day.num_rows,
        *keys,
        memoryview(columns["ts"].to_numpy(zero_copy_only=False).astype(np.int64)).cast("B"),
        memoryview(columns["flags"].to_numpy(zero_copy_only=False).copy()).cast("B"),
        GAP_MS,
    )
    table = np.frombuffer(buffer, dtype=np.int64).reshape(count, SESSION_FIGURES)
    figures = {name: table[:, i] for i, name in enumerate(FIGURES)}
    started, ended = figures["min_ts"].copy(), figures["max_ts"].copy()
    started_ts, ended_ts = _times(started), _times(ended)
    if started_ts is None or ended_ts is None:
        return None

    def take(column: str, figure: str) -> pa.Array:
        """The column's value at each session's row (-1: none, null)."""
        rows = figures[figure]
        return pc.take(columns[column], pa.array(rows, mask=rows < 0))

    visits = figures["visit"]
    visit_keys = pc.binary_join_element_wise(
        take("user_id", "key_row"), pa.array(visits).cast(pa.string()), "#"
    )
    return pa.table(
        {
            "event_date": pa.array(np.full(count, (event_date - _EPOCH).days, np.int32)).cast(
                pa.date32()
            ),
            "customer_id": take("customer_id", "key_row"),
            "session_key": pc.if_else(
                pa.array(visits > 0), visit_keys, take("session_id", "key_row")
            ),
            "user_id": take("user_id", "user_row"),
            "started_ts": started_ts,
            "ended_ts": ended_ts,
            # round(epoch(ended) - epoch(started), 3) of whole milliseconds is exactly this
            "length_s": pa.array((ended - started) / 1000.0),
            "events": pa.array(figures["events"]),
            "pages": pa.array(figures["pages"]),
            "entry_url": take("url", "entry_url_row"),
            "exit_url": take("url", "exit_url_row"),
            "utm_source": take("utm_source", "utm_source_row"),
            "referrer_class": take("referrer_class", "referrer_class_row"),
            "country": take("geo_country", "country_row"),
            "device_class": take("device_class", "device_class_row"),
        }
    )


def _times(ms: np.ndarray) -> pa.Array | None:
    """Times as the SQL's strftime(t, '%Y-%m-%d %H:%M:%S.%g') writes them (23 bytes each)."""
    text = format_ms_times(memoryview(ms).cast("B"), len(ms))
    if text is None:
        return None
    offsets = pa.py_buffer(np.arange(0, 23 * len(ms) + 1, 23, dtype=np.int32))
    return pa.Array.from_buffers(pa.string(), len(ms), [None, offsets, pa.py_buffer(text)])


def _one_array(column: pa.ChunkedArray) -> pa.Array:
    """One contiguous array (a take from chunks costs 7x one from one array); strings with
    int32 offsets, as sessions_of_day reads them (ArrowInvalid past 2 GiB)."""
    array = column.combine_chunks()
    if pa.types.is_large_string(array.type) or pa.types.is_string_view(array.type):
        array = array.cast(pa.string())
    return array


def _buffers(array: pa.Array) -> tuple:
    """A string array's buffers as sessions_of_day takes them: offsets, data, validity (or
    None) and the array's offset."""
    validity, offsets, data = array.buffers()
    if offsets is None:  # an empty array may have none
        offsets = pa.py_buffer(np.zeros(1, dtype=np.int32).tobytes())
    if data is None:
        data = pa.py_buffer(b"")

    def view(buffer: pa.Buffer | None) -> memoryview | None:
        return None if buffer is None else memoryview(buffer).cast("B")

    return view(offsets), view(data), view(validity), array.offset
