"""Wire format and validation: typed records in, bytes out, clear errors for bad input."""

from schemas.errors import SchemaError
from schemas.wire import (
    DEFAULT_SCALE,
    KINDS,
    MAX_PAYLOAD_BYTES,
    SCHEMA_VERSION,
    DeadLetter,
    Interaction,
    Item,
    RatingScale,
    RecItem,
    Recommendation,
    User,
    decode_interaction,
    decode_item,
    decode_recommendation,
    decode_user,
    encode,
)

__all__ = [
    "DEFAULT_SCALE",
    "KINDS",
    "MAX_PAYLOAD_BYTES",
    "SCHEMA_VERSION",
    "DeadLetter",
    "Interaction",
    "Item",
    "RatingScale",
    "RecItem",
    "Recommendation",
    "SchemaError",
    "User",
    "decode_interaction",
    "decode_item",
    "decode_recommendation",
    "decode_user",
    "encode",
]
