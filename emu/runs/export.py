"""JSON-lines export of a sweep: one record per case, for scripts that read that format.

The records are those of the results file emu wrote before the SQLite store (``store.py``):
``id``, ``case`` (every ``emu run`` parameter), ``class``, ``state``, ``return_value``,
``exact``, ``error``, ``bytes_copied``, ``violations``, ``mc``, ``pf``, ``tail_retry``,
``message``; sorted keys, grid order, so the same sweep exports the same bytes.  A case is
about 540 bytes, so the export is for small sweeps; larger ones are queried in the store.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from emu.errors import InputError, UsageError

#: Largest sweep exported (about 540 MB of JSON lines).
MAX_CASES = 1_000_000


def write_jsonl(path: str, records: Iterable[dict[str, Any]], cases: int) -> None:
    """Write ``records`` to ``path`` (which must not exist) as JSON lines.

    Raises:
        UsageError: the sweep is larger than ``MAX_CASES``.
        InputError: the file cannot be written.
    """
    if cases > MAX_CASES:
        raise UsageError(f"--jsonl: {cases} cases is more than the {MAX_CASES} a JSON-lines "
                         "export holds; query the --results store with sqlite3 instead")
    tmp = Path(f"{path}.{os.getpid()}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise InputError(f"{path}: cannot write: {e.strerror}") from None
