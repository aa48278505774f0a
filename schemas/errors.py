"""Errors raised by the wire-format layer."""

from __future__ import annotations


class SchemaError(ValueError):
    """A payload that does not match the wire format.

    ``reason`` is a short human-readable sentence that ends up in the dead-letter record; ``field``
    names the offending field when there is one.
    """

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason if field is None else f"{field}: {reason}")
        self.reason = reason
        self.field = field

    def describe(self) -> str:
        return str(self)
