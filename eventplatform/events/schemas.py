"""The registry of known contract versions, and the CRC-64-AVRO fingerprint that names them.

Each ``eventplatform/schemas/event.vN.avsc`` is one version. A message carries the fingerprint
of the schema it was written with (Avro single-object encoding), so a reader looks the writer
schema up here and resolves it to the newest version it knows. Old producers keep working.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastavro import parse_schema
from fastavro.schema import fingerprint, to_parsing_canonical_form

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"


@dataclass(frozen=True)
class SchemaVersion:
    version: int
    schema: dict[str, Any]  # as fastavro parsed it, logical types and all
    wire_schema: dict[str, Any]  # the same without logical types: timestamps stay epoch ms
    fingerprint: bytes  # CRC-64-AVRO of the canonical form, 8 bytes little-endian as on the wire
    canonical_form: str

    @property
    def fingerprint_hex(self) -> str:
        return self.fingerprint.hex()


def load_schema_version(path: Path) -> SchemaVersion:
    match = re.fullmatch(r"event\.v(\d+)\.avsc", path.name)
    if not match:
        raise ValueError(f"schema file name must be event.vN.avsc, got {path.name}")
    raw = json.loads(path.read_text())
    parsed = parse_schema(raw)
    wire = parse_schema(_without_logical_types(raw))
    canonical = to_parsing_canonical_form(parsed)
    if canonical != to_parsing_canonical_form(wire):
        raise AssertionError("stripping logical types must not change the wire format")
    fp = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
    return SchemaVersion(int(match.group(1)), parsed, wire, fp, canonical)


def _without_logical_types(node: Any) -> Any:
    """A copy of a schema without ``logicalType``.

    The parsing canonical form (and so the fingerprint and the bytes) ignores logical types;
    dropping them lets fastavro skip building a datetime per timestamp, which makes decoding
    about four times faster. Timestamps are epoch milliseconds in the codec.
    """
    if isinstance(node, dict):
        return {k: _without_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_without_logical_types(v) for v in node]
    return node


class SchemaRegistry:
    """Known writer schemas by fingerprint; the newest one is the reader (and writer) schema."""

    def __init__(self, versions: list[SchemaVersion]) -> None:
        if not versions:
            raise ValueError("no schema versions")
        self.versions = sorted(versions, key=lambda v: v.version)
        self.by_fingerprint = {v.fingerprint: v for v in self.versions}
        self.by_version = {v.version: v for v in self.versions}

    @property
    def latest(self) -> SchemaVersion:
        return self.versions[-1]

    @classmethod
    def from_dir(cls, directory: Path = SCHEMA_DIR) -> SchemaRegistry:
        return cls([load_schema_version(p) for p in sorted(directory.glob("event.v*.avsc"))])


@functools.cache
def default_registry() -> SchemaRegistry:
    return SchemaRegistry.from_dir()


# event_type (on the wire, in JSON) -> the payload record's full Avro name.
EVENT_TYPES: dict[str, str] = {
    "page_view": "eventplatform.PageView",
    "click": "eventplatform.Click",
    "signup": "eventplatform.Signup",
    "purchase": "eventplatform.Purchase",
    "impression": "eventplatform.Impression",
    "ad_click": "eventplatform.AdClick",
    "conversion": "eventplatform.Conversion",
    "bid": "eventplatform.Bid",
}
RECORD_TO_EVENT_TYPE = {record: event_type for event_type, record in EVENT_TYPES.items()}
AD_EVENT_TYPES = frozenset({"impression", "ad_click", "conversion", "bid"})
