"""Checks of one record field's value: texts, messages, numbers.

Each check raises :class:`jalign.data.validation.Malformed` naming the field
(``"chosen[1].role"``, ``"scores[0]"``) and the problem; the record readers in
:mod:`jalign.data.formats` call them.

- Texts are strings of valid Unicode (no lone surrogates such as
  ``"\\ud800"``, which JSON can spell but no tokenizer can encode) or lists of
  ``{"role", "content"}`` messages with string values.
- Roles are one of :data:`ROLES`; a response's messages are the assistant's
  (:data:`RESPONSE_ROLES`), so a ``"user"`` turn cannot be trained on as a
  response.
- Numbers are ints or floats (not bools), finite, and within float32's range,
  since labels are stored as float32 (a 401-digit integer or ``1e39`` would
  become ``inf``).
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import numpy as np

from jalign.data.validation import Malformed

Messages = list[dict[str, str]]
Text = str | Messages

# Chat roles a message may have; a response's messages are the assistant's
# (with tool results between its turns).
ROLES = ("system", "user", "assistant", "tool")
RESPONSE_ROLES = ("assistant", "tool")
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_SURROGATE = re.compile("[\ud800-\udfff]")


def get(record: Mapping, field: str) -> Any:
    """The field's value; absent or null is ``missing_field``."""
    value = record.get(field)
    if value is None:
        raise Malformed("missing_field", field, "required field is missing or null")
    return value


def check_text(value: Any, field: str, chat: bool | None) -> bool:
    """Checks a string or message list; returns whether it is conversational.

    ``chat`` is the record's style (``None`` while unknown); a value of the
    other style is a ``wrong_type``. Roles must be in :data:`ROLES`.
    """
    kind = "string" if chat is False else "list of messages" if chat else (
        "string or a list of {role, content} messages")
    if isinstance(value, str) and chat is not True:
        check_unicode(value, field)
        return False
    if isinstance(value, list) and chat is not False:
        for m, message in enumerate(value):
            check_message(message, f"{field}[{m}]")
        return True
    raise Malformed("wrong_type", field,
                    f"expected a {kind}; got {type(value).__name__}")


def check_message(message: Any, field: str) -> None:
    if not isinstance(message, Mapping):
        raise Malformed("wrong_type", field, "expected a {role, content} "
                        f"message; got {type(message).__name__}")
    for key in ("role", "content"):
        if not isinstance(message.get(key), str):
            raise Malformed("wrong_type", f"{field}.{key}", "expected a "
                            f"string; got {type(message.get(key)).__name__}")
        check_unicode(message[key], f"{field}.{key}")
    if message["role"] not in ROLES:
        raise Malformed("wrong_type", f"{field}.role", f"unknown role "
                        f"{message['role']!r}; expected one of {ROLES}")


def check_unicode(text: str, field: str) -> None:
    bad = _SURROGATE.search(text)
    if bad:
        raise Malformed("invalid_text", field, "not valid Unicode: lone "
                        f"surrogate U+{ord(bad.group()):04X} at character "
                        f"{bad.start()}")


def check_response(value: Text, field: str) -> None:
    """A response: not empty, not only whitespace, only the assistant's turns."""
    if isinstance(value, list):
        if not value:
            raise Malformed("empty_response", field, "no messages")
        for m, message in enumerate(value):
            if message["role"] not in RESPONSE_ROLES:
                raise Malformed("wrong_type", f"{field}[{m}].role", "a response "
                                f"message must have a role in {RESPONSE_ROLES}; "
                                f"got {message['role']!r}")
    texts = [value] if isinstance(value, str) else [m["content"] for m in value]
    if not any(t.strip() for t in texts):
        raise Malformed("empty_response", field, "response is empty")


def finite(value: Any, field: str) -> float:
    """A number that float32 labels hold: finite and within its range."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, float, np.integer, np.floating)):
        raise Malformed("wrong_type", field,
                        f"expected a number; got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:
        raise Malformed("wrong_type", field, f"a {int(value).bit_length()}-bit "
                        "integer is beyond float32's range") from None
    if not math.isfinite(number):
        raise Malformed("wrong_type", field, f"expected a finite number; "
                        f"got {number}")
    if abs(number) > _FLOAT32_MAX:
        raise Malformed("wrong_type", field, f"{number} is beyond float32's "
                        f"range (±{_FLOAT32_MAX:.3g})")
    return number


def probability(value: Any, field: str) -> float:
    p = finite(value, field)
    if not 0.0 <= p <= 1.0:
        raise Malformed("wrong_type", field,
                        f"expected a probability in [0, 1]; got {p}")
    return p
