"""The collector's OpenAPI document, served at /openapi.json."""

from __future__ import annotations

from typing import Any

from eventplatform.events.examples import example_event
from eventplatform.events.schemas import EVENT_TYPES


def openapi_document() -> dict[str, Any]:
    error = {"type": "object", "properties": {"error": {"type": "string"}}}
    event = {
        "type": "object",
        "required": ["event_type", "event_ts", "payload"],
        "properties": {
            "event_type": {"type": "string", "enum": list(EVENT_TYPES)},
            "event_ts": {
                "oneOf": [
                    {"type": "integer", "description": "epoch milliseconds"},
                    {"type": "string", "format": "date-time"},
                ]
            },
            "event_id": {
                "type": "string",
                "maxLength": 128,
                "description": "assigned (UUID) when missing; resend the same id on "
                "retry so that spend and marts count it once",
            },
            **{
                name: {"type": "string"}
                for name in ("source", "user_id", "session_id", "ip", "user_agent", "device")
            },
            "customer_id": {
                "type": "string",
                "description": "optional; must be the API key's customer",
            },
            "payload": {
                "type": "object",
                "description": "fields of the event type; see the "
                "Avro schemas in eventplatform/schemas",
            },
        },
        "additionalProperties": False,
    }
    accepted = {
        "type": "object",
        "properties": {
            "customer_id": {"type": "string"},
            "received": {"type": "integer"},
            "accepted": {"type": "integer"},
            "overflowed": {"type": "integer"},
            "rejected": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "index": {"type": "integer"},
                        "errors": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
            "event_ids": {"type": "array", "items": {"type": "string"}},
            "delivery": {"type": "object"},
        },
    }
    json_error = {"application/json": {"schema": error}}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "eventplatform collector",
            "version": "1",
            "description": "Send batches of events. The customer comes from the API key. "
            "Operations (/metrics, /readyz, this document) are on the admin listener "
            "(EP_COLLECTOR_ADMIN_HOST:EP_COLLECTOR_ADMIN_PORT, loopback by default), not here.",
        },
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": {
            "/v1/events": {
                "post": {
                    "summary": "Send a batch of events (JSON array or NDJSON, optionally gzip)",
                    "parameters": [
                        {
                            "name": "sync",
                            "in": "query",
                            "schema": {"type": "boolean"},
                            "description": "wait for the broker to acknowledge every event",
                        },
                        {
                            "name": "X-Content-SHA256",
                            "in": "header",
                            "schema": {"type": "string"},
                            "description": "hex SHA-256 of the body as sent; mismatch: 400",
                        },
                        {
                            "name": "Content-Encoding",
                            "in": "header",
                            "schema": {"type": "string", "enum": ["gzip", "identity"]},
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"type": "array", "items": event},
                                "example": [example_event(t) for t in EVENT_TYPES],
                            },
                            "application/x-ndjson": {"schema": {"type": "string"}},
                        },
                    },
                    "responses": {
                        "202": {
                            "description": "taken: counts, and each rejected event's index "
                            "and reasons (rejected events are kept in the dead-letter topic)",
                            "content": {"application/json": {"schema": accepted}},
                        },
                        "400": {
                            "description": "body unusable (not JSON, bad gzip, checksum)",
                            "content": json_error,
                        },
                        "401": {
                            "description": "missing, unknown or revoked key",
                            "content": json_error,
                        },
                        "413": {
                            "description": "body too large: as sent, once inflated, or "
                            "more events than the limit",
                            "content": json_error,
                        },
                        "415": {
                            "description": "unsupported Content-Encoding",
                            "content": json_error,
                        },
                        "429": {
                            "description": "over the hard cap, or too many of the "
                            "customer's large or ?sync=true requests at once; see Retry-After",
                            "content": json_error,
                        },
                        "502": {
                            "description": "sync: the broker refused some events",
                            "content": {"application/json": {"schema": accepted}},
                        },
                        "503": {
                            "description": "producer buffer full, or the collector busy "
                            "with large requests or key lookups; see Retry-After",
                            "content": json_error,
                        },
                        "504": {
                            "description": "sync: not acknowledged in time",
                            "content": {"application/json": {"schema": accepted}},
                        },
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "the process is up",
                    "security": [],
                    "responses": {"200": {"description": "ok"}},
                }
            },
        },
    }
