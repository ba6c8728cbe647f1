"""Registry of event schemas: one JSON Schema (draft 2020-12) per event type and version.

Files live in ``schemas/`` (installed as the ``polder.schemas`` package) and are named after the
event type they describe, e.g. ``polder.location.pings_recorded.v1.json``. The envelope itself is
``cloudevents.envelope.json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import jsonschema_rs
import orjson

from polder.common.envelope import DecodeError, Event, decode_dict, from_dict

ENVELOPE_SCHEMA = "cloudevents.envelope"


def schemas_folder() -> Traversable:
    """``schemas/`` of a source checkout (editable install), else the installed package data."""
    checkout = Path(__file__).resolve().parents[2] / "schemas"
    if checkout.is_dir():
        return checkout
    return resources.files("polder.schemas")


class SchemaError(ValueError):
    """An event that does not match its schema, or whose type has no schema."""


class SchemaRegistry:
    def __init__(self, documents: Mapping[str, Mapping[str, Any]]) -> None:
        if ENVELOPE_SCHEMA not in documents:
            raise SchemaError(f"no {ENVELOPE_SCHEMA} schema")
        self._documents = dict(documents)
        self._validators = {
            name: jsonschema_rs.Draft202012Validator(dict(doc)) for name, doc in documents.items()
        }

    @classmethod
    def load(cls) -> SchemaRegistry:
        documents = {
            entry.name.removesuffix(".json"): orjson.loads(entry.read_bytes())
            for entry in schemas_folder().iterdir()
            if entry.name.endswith(".json")
        }
        return cls(documents)

    @property
    def event_types(self) -> frozenset[str]:
        return frozenset(name for name in self._documents if name != ENVELOPE_SCHEMA)

    def document(self, name: str) -> Mapping[str, Any]:
        return self._documents[name]

    def check(self, name: str, instance: Any) -> None:
        validator = self._validators.get(name)
        if validator is None:
            raise SchemaError(f"unknown event type {name!r}")
        if validator.is_valid(instance):  # the common case, without building error objects
            return
        errors = [
            f"{'/'.join(map(str, e.instance_path)) or '(root)'}: {e.message}"
            for e in validator.iter_errors(instance)
        ]
        if errors:
            raise SchemaError(f"{name}: " + "; ".join(errors[:5]))

    def validate(self, event: Event) -> dict[str, Any]:
        """Check an outgoing event's envelope and data (producers call this before sending);
        the envelope as checked, to be written as it is."""
        doc = event.to_dict()
        self.check(ENVELOPE_SCHEMA, doc)
        self.check(event.type, doc["data"])
        return doc

    def encode(self, event: Event) -> bytes:
        return orjson.dumps(self.validate(event))

    def decode(self, raw: bytes) -> Event:
        """Parse and validate an incoming event; DecodeError or SchemaError say why not."""
        doc = decode_dict(raw)
        self.check(ENVELOPE_SCHEMA, doc)
        self.check(doc["type"], doc["data"])
        return from_dict(doc)


__all__ = ["DecodeError", "SchemaError", "SchemaRegistry"]
