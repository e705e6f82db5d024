"""The one base class of framecache's user-facing errors.

Raise a subclass of `FramecacheError` for anything a user can fix (a bad flag value, a missing or
damaged file, a store of other settings): its message is one line that says what is wrong and what
to do. `cli.py` prints exactly that line and exits 1. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class FramecacheError(Exception):
    """A user-facing error: the message is one actionable line."""


class StoreError(FramecacheError, RuntimeError):
    """A store that cannot be opened or written as asked (the message says why and what to do)."""
