"""Finds where a protobuf message that failed to parse is broken (invalid UTF-8 in a string).

grpc parses requests before any handler runs, and protobuf's DecodeError does not say
which field was bad; this walks the wire format with the descriptor to name it.
"""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def find_bad_field(descriptor: Descriptor, data: bytes, path: str = "") -> str:
    """Dotted path of the first string field holding invalid UTF-8, or "" when none is found."""
    pos = 0
    counts: dict[str, int] = {}
    try:
        while pos < len(data):
            key, pos = _varint(data, pos)
            number, wire = key >> 3, key & 7
            if wire == 0:
                _, pos = _varint(data, pos)
                continue
            if wire == 1:
                pos += 8
                continue
            if wire == 5:
                pos += 4
                continue
            if wire != 2:
                return ""  # a group or no wire type at all: broken structure, not a string
            length, pos = _varint(data, pos)
            chunk, pos = data[pos : pos + length], pos + length
            field = descriptor.fields_by_number.get(number)
            if field is None:
                continue
            where = f"{path}.{field.name}" if path else field.name
            if field.is_repeated:
                index = counts.get(field.name, 0)
                counts[field.name] = index + 1
                if not (field.message_type and field.message_type.GetOptions().map_entry):
                    where = f"{where}[{index}]"
            if field.type == FieldDescriptor.TYPE_STRING:
                try:
                    chunk.decode("utf-8")
                except UnicodeDecodeError:
                    return where
            elif field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
                found = find_bad_field(field.message_type, chunk, where)
                if found:
                    return found
    except ValueError:
        return ""  # truncated: broken structure, not a string
    return ""
