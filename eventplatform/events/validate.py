"""Validation of a JSON event against the contract, with one precise error per bad field.

The collector turns what a customer sent into a contract datum here. Errors name the field by
its path (``payload.amount``), say what was expected and what came, so a customer can fix the
sender without guessing. Unknown fields are errors too: a field we would silently ignore is
data lost.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from eventplatform.events.policy import REASON_COST, REASON_EVENT_TS, EventPolicy
from eventplatform.events.schemas import EVENT_TYPES, SchemaRegistry, default_registry

MAX_STRING = 8192
MAX_ID = 128
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
MAX_EPOCH_MS = 253402300799999  # 9999-12-31T23:59:59.999Z
# Envelope fields a sender may set. customer_id must match the API key when present;
# received_ts and schema_version are the collector's to stamp and are overwritten.
SENDER_ENVELOPE = (
    "event_id",
    "event_type",
    "event_ts",
    "source",
    "user_id",
    "session_id",
    "ip",
    "user_agent",
    "device",
    "payload",
    "customer_id",
    "received_ts",
    "schema_version",
)


VALIDATION = "validation"  # the dead-letter reason of a contract error


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str
    reason: str = VALIDATION  # the stable dead-letter reason (policy errors have their own)

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def dead_letter_reason(errors: list[FieldError]) -> str:
    """One stable reason for a rejected event: a contract error wins over a policy one (the
    event must be fixed first); an event that only breaks the policy carries that reason."""
    reasons = {e.reason for e in errors}
    if VALIDATION in reasons or not reasons:
        return VALIDATION
    return next(e.reason for e in errors)


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _type_name(value: Any) -> str:
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        type(None): "null",
        int: "integer",
        float: "number",
    }.get(type(value), type(value).__name__)


def parse_timestamp_ms(value: Any) -> int:
    """Epoch milliseconds from an integer (ms) or an ISO-8601 string with a time zone."""
    if isinstance(value, bool):
        raise ValueError(f"expected epoch milliseconds or ISO-8601, got {_describe(value)}")
    if isinstance(value, int):
        if not 0 <= value <= MAX_EPOCH_MS:
            raise ValueError(f"epoch milliseconds out of range: {value}")
        return value
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"not an ISO-8601 timestamp: {_describe(value)}") from None
        if parsed.tzinfo is None:
            raise ValueError(f"timestamp needs a time zone (Z or +hh:mm): {_describe(value)}")
        ms = int(parsed.timestamp() * 1000)
        if not 0 <= ms <= MAX_EPOCH_MS:
            raise ValueError(f"timestamp before 1970 or after 9999: {_describe(value)}")
        return ms
    raise ValueError(f"expected epoch milliseconds or ISO-8601 string, got {_type_name(value)}")


def _check_primitive(avro_type: str, value: Any) -> str | None:
    """None when ``value`` fits ``avro_type``, else the error message."""
    if avro_type == "string":
        if not isinstance(value, str):
            return f"expected string, got {_type_name(value)} {_describe(value)}"
        if len(value) > MAX_STRING:
            return f"string longer than {MAX_STRING} characters ({len(value)})"
        return None
    if avro_type in ("int", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            return f"expected integer, got {_type_name(value)} {_describe(value)}"
        low, high = INT32 if avro_type == "int" else INT64
        return None if low <= value <= high else f"integer out of range: {value}"
    if avro_type in ("double", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expected number, got {_type_name(value)} {_describe(value)}"
        return None if math.isfinite(value) else f"number must be finite, got {value}"
    if avro_type == "boolean":
        return None if isinstance(value, bool) else f"expected boolean, got {_type_name(value)}"
    return f"unsupported contract type {avro_type}"


class EventValidator:
    """Validates JSON events against the newest contract version and the event policy."""

    def __init__(
        self, registry: SchemaRegistry | None = None, policy: EventPolicy | None = None
    ) -> None:
        registry = registry or default_registry()
        self.policy = policy or EventPolicy()
        self._max_age_ms = self.policy.max_age_ms
        self._max_future_ms = self.policy.max_future_ms
        self._max_cost = self.policy.max_event_cost
        self.version = registry.latest.version
        schema = registry.latest.schema
        fields = {f["name"]: f for f in schema["fields"]}
        self.envelope_optional = [
            name for name, f in fields.items() if isinstance(f["type"], list) and name != "payload"
        ]
        # payload record name -> [(field name, avro type, required)]
        self.payload_fields: dict[str, list[tuple[str, str, bool]]] = {}
        for record in fields["payload"]["type"]:
            spec = []
            for f in record["fields"]:
                ftype = f["type"]
                if isinstance(ftype, list):
                    spec.append((f["name"], next(t for t in ftype if t != "null"), False))
                else:
                    spec.append((f["name"], ftype, True))
            self.payload_fields[record["name"]] = spec
        self.allowed_envelope = frozenset(SENDER_ENVELOPE) | frozenset(self.envelope_optional)
        self.payload_names = {
            record: frozenset(name for name, _, _ in spec)
            for record, spec in self.payload_fields.items()
        }

    def validate(
        self, obj: Any, customer_id: str, received_ms: int, default_source: str = "http"
    ) -> tuple[dict[str, Any] | None, list[FieldError]]:
        """``(datum, [])`` for a good event, ``(None, errors)`` for a bad one."""
        datum = self._good_event(obj, customer_id, received_ms, default_source)
        if datum is not None:
            return datum, []
        return self._validate(obj, customer_id, received_ms, default_source)

    def _good_event(
        self, obj: Any, customer_id: str, received_ms: int, default_source: str
    ) -> dict[str, Any] | None:
        """The fast path: the datum of an event that is certainly good, else None.

        The same rules as :meth:`_validate` in one pass with no error bookkeeping; anything
        unusual (a wrong type, a string timestamp that does not parse, a subclass) answers
        None and the full validation says precisely what is wrong. Both give the same datum
        for every good event (a property test checks).
        """
        if type(obj) is not dict or not self.allowed_envelope.issuperset(obj):
            return None
        event_type = obj.get("event_type")
        record = EVENT_TYPES.get(event_type) if type(event_type) is str else None
        payload = obj.get("payload")
        if record is None or type(payload) is not dict:
            return None
        if not self.payload_names[record].issuperset(payload):
            return None
        event_ts = obj.get("event_ts")
        if type(event_ts) is not int or not 0 <= event_ts <= MAX_EPOCH_MS:
            if type(event_ts) is not str:
                return None
            try:
                event_ts = parse_timestamp_ms(event_ts)
            except ValueError:
                return None
        if not -self._max_age_ms <= event_ts - received_ms <= self._max_future_ms:
            return None
        body_customer = obj.get("customer_id")
        if body_customer is not None and body_customer != customer_id:
            return None
        event_id = obj.get("event_id")
        if event_id is None:
            event_id = str(uuid.uuid4())
        elif type(event_id) is not str or not 0 < len(event_id) <= MAX_ID:
            return None
        source = obj.get("source", default_source)
        if type(source) is not str or not 0 < len(source) <= MAX_ID:
            return None
        datum: dict[str, Any] = {
            "event_id": event_id,
            "event_type": event_type,
            "event_ts": event_ts,
            "received_ts": received_ms,
            "customer_id": customer_id,
            "source": source,
            "schema_version": self.version,
        }
        for name in self.envelope_optional:
            value = obj.get(name)
            if value is not None and (type(value) is not str or len(value) > MAX_STRING):
                return None
            datum[name] = value
        out: dict[str, Any] = {}
        for name, avro_type, required in self.payload_fields[record]:
            value = payload.get(name)
            kind = type(value)
            if value is None:
                if required:
                    return None
            elif avro_type == "string":
                if kind is not str or len(value) > MAX_STRING:
                    return None
            elif avro_type == "double" or avro_type == "float":
                if kind is int and INT64[0] <= value <= INT64[1]:
                    value = float(value)
                elif kind is not float or not math.isfinite(value):
                    return None
            elif avro_type == "long" or avro_type == "int":
                low, high = INT32 if avro_type == "int" else INT64
                if kind is not int or not low <= value <= high:
                    return None
            elif avro_type != "boolean" or kind is not bool:
                return None
            out[name] = value
        cost = out.get("cost")
        if cost is not None and not 0 <= cost <= self._max_cost:
            return None
        datum["payload"] = out
        return datum

    def _validate(
        self, obj: Any, customer_id: str, received_ms: int, default_source: str
    ) -> tuple[dict[str, Any] | None, list[FieldError]]:
        """Every rule, every error: for the events the fast path did not take."""
        if not isinstance(obj, dict):
            return None, [FieldError("$", f"expected a JSON object, got {_type_name(obj)}")]
        errors: list[FieldError] = []
        for key in obj:
            if key not in self.allowed_envelope:
                errors.append(FieldError(str(key), "unknown field"))

        event_type = obj.get("event_type")
        record = EVENT_TYPES.get(event_type) if isinstance(event_type, str) else None
        if event_type is None:
            errors.append(FieldError("event_type", "required"))
        elif record is None:
            errors.append(
                FieldError(
                    "event_type",
                    f"unknown type {_describe(event_type)}; known: {', '.join(EVENT_TYPES)}",
                )
            )

        event_ts = None
        if "event_ts" not in obj:
            errors.append(FieldError("event_ts", "required"))
        else:
            try:
                event_ts = parse_timestamp_ms(obj["event_ts"])
            except ValueError as exc:
                errors.append(FieldError("event_ts", str(exc)))
            else:
                problem = self.policy.event_ts_problem(event_ts, received_ms)
                if problem:
                    errors.append(FieldError("event_ts", problem, REASON_EVENT_TS))

        body_customer = obj.get("customer_id")
        if body_customer is not None and body_customer != customer_id:
            errors.append(
                FieldError(
                    "customer_id", "does not match the API key's customer; omit it or send your own"
                )
            )

        event_id = obj.get("event_id")
        if event_id is None:
            event_id = str(uuid.uuid4())
        elif not isinstance(event_id, str) or not 0 < len(event_id) <= MAX_ID:
            errors.append(FieldError("event_id", f"expected a string of 1..{MAX_ID} characters"))

        source = obj.get("source", default_source)
        if not isinstance(source, str) or not 0 < len(source) <= MAX_ID:
            errors.append(FieldError("source", f"expected a string of 1..{MAX_ID} characters"))

        datum: dict[str, Any] = {
            "event_id": event_id,
            "event_type": event_type,
            "event_ts": event_ts,
            "received_ts": received_ms,
            "customer_id": customer_id,
            "source": source,
            "schema_version": self.version,
        }
        for name in self.envelope_optional:
            value = obj.get(name)
            if value is not None:
                problem = _check_primitive("string", value)
                if problem:
                    errors.append(FieldError(name, problem))
            datum[name] = value

        payload = obj.get("payload")
        if payload is None:
            errors.append(FieldError("payload", "required (an object with the event's fields)"))
        elif not isinstance(payload, dict):
            errors.append(FieldError("payload", f"expected object, got {_type_name(payload)}"))
        elif record is not None:
            datum["payload"] = self._payload(record, payload, errors)
        if errors:
            return None, errors
        return datum, []

    def _payload(self, record: str, payload: dict[str, Any], errors: list[FieldError]) -> dict:
        spec = self.payload_fields[record]
        known = {name for name, _, _ in spec}
        for key in payload:
            if key not in known:
                errors.append(FieldError(f"payload.{key}", f"unknown field for {record}"))
        out: dict[str, Any] = {}
        for name, avro_type, required in spec:
            value = payload.get(name)
            if value is None:
                if required:
                    errors.append(FieldError(f"payload.{name}", f"required ({avro_type})"))
                out[name] = None
                continue
            problem = _check_primitive(avro_type, value)
            if problem:
                errors.append(FieldError(f"payload.{name}", problem))
                out[name] = value
                continue
            if avro_type in ("double", "float"):
                value = float(value)
            if name == "cost" and (problem := self.policy.cost_problem(value)):
                errors.append(FieldError("payload.cost", problem, REASON_COST))
            out[name] = value
        return out
