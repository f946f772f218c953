"""JSON encoding of one message type (a struct, or a tagged union of structs) with msgspec."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec

T = TypeVar("T")


class JsonCodec(Generic[T]):
    """Encodes values of the type it was made for, and decodes (validating) bytes into one."""

    def __init__(self, type_: Any) -> None:
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(type_)

    def encode(self, value: T) -> bytes:
        return self._encoder.encode(value)

    def decode(self, data: bytes) -> T:
        return self._decoder.decode(data)  # type: ignore[no-any-return]
