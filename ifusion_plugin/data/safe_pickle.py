"""Restricted unpickling of vocabulary pickles (DIEN's uid_voc.pkl and friends).

Only plain ``dict``/``str``/``int`` values are accepted: the unpickler resolves no global at
all, so a pickle that would call ``os.system`` (or build any object) raises
:class:`UnsafePickleError` instead of running code. Never use ``pickle.load`` on these files.
"""

from __future__ import annotations

import io
import pickle

__all__ = ["UnsafePickleError", "load_vocabulary"]


class UnsafePickleError(ValueError):
    """The pickle holds something other than a plain dict of str/int."""


class _Restricted(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        # Plain dicts, strings and ints need no global; any lookup means code or objects.
        raise UnsafePickleError(f"refusing to load global {module}.{name} from a vocabulary pickle")


def load_vocabulary(path: str) -> dict[str, int]:
    """Read ``path`` as a dict of ``str -> int`` with no code execution.

    Raises:
        UnsafePickleError: the file references any global, or is not a dict of str/int.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        value = _Restricted(io.BytesIO(data)).load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{path}: {e}") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) and type(v) is int for k, v in value.items()):
        raise UnsafePickleError(f"{path}: expected a dict of str -> int, got {type(value).__name__}")
    return value
