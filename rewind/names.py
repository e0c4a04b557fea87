"""The one rule for names: buffer names, agent ids, run ids and checkpoint file names.

A buffer's snapshot is stored as `<buffer>.snapshot` inside a checkpoint
folder named after the agent and run, so a name valid in one service must be
valid in the other: one rule, checked on both sides, keeps a buffer from being
created under a name that can never be checkpointed.
"""

from __future__ import annotations

import re

from rewind.errors import InvalidArgument

MAX_NAME_CHARS = 100
MAX_FILE_NAME_CHARS = 128  # a name plus a suffix such as ".snapshot"
# Letters, digits and . _ - ; must start with a letter or digit (so never '.' or '..'),
# which also rules out '/', '\\' and control characters.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
RULE = "letters, digits, '.', '_' and '-', starting with a letter or digit, no '..'"


def check_name(value: str, field: str, *, max_chars: int = MAX_NAME_CHARS) -> str:
    """Return `value` if it follows the rule, else raise InvalidArgument naming `field`.

    Raises:
        InvalidArgument: empty, longer than `max_chars`, or not made of
            [A-Za-z0-9._-] starting with a letter or digit, or containing '..'.
    """
    if not value:
        raise InvalidArgument(f"{field}: is empty")
    if len(value) > max_chars:
        raise InvalidArgument(f"{field}: is {len(value)} characters long; the limit is {max_chars}")
    if not _NAME.fullmatch(value) or ".." in value:
        raise InvalidArgument(f"{field}: {value!r} is not allowed; use {RULE}")
    return value
