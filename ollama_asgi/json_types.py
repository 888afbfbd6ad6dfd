"""How a JSON value's type is named in a 400: the words of Ollama's own refusals.

The request checks of several modules (options, model names, the body's fields) name the type a
client sent; one table here keeps their wording the same.
"""

from __future__ import annotations

__all__ = ["json_type_name"]

_NAMES: dict[type, str] = {
    bool: "boolean",
    int: "number",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
}


def json_type_name(value: object) -> str:
    """``boolean``, ``number``, ``string``, ``array``, ``object`` or ``null``; a Python type's name otherwise."""
    return _NAMES.get(type(value), "null" if value is None else type(value).__name__)
