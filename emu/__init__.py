"""emu: run the x86-64 kernel user-copy routines under Unicorn with injected #PF and #MC.

The public surface is small; everything else is internal and may change.

The names below are loaded on first use (PEP 562), so importing one stage (``emu.kernel.eras``,
say) does not load the emulator, the assemblers or the ELF reader through this package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emu.build.target import Settings, Target, era_target, get_target
    from emu.core.machine import Buffers, State
    from emu.errors import EmuError
    from emu.kernel.conventions import Routine
    from emu.kernel.eras import ERAS, Era, parse_cpu
    from emu.kernel.outcome import Outcome

#: Public name → the module that defines it.
_HOME = {
    "ERAS": "emu.kernel.eras", "Era": "emu.kernel.eras", "Routine": "emu.kernel.conventions",
    "parse_cpu": "emu.kernel.eras",
    "EmuError": "emu.errors",
    "Buffers": "emu.core.machine", "State": "emu.core.machine",
    "Outcome": "emu.kernel.outcome",
    "Settings": "emu.build.target", "Target": "emu.build.target",
    "era_target": "emu.build.target", "get_target": "emu.build.target",
}

__all__ = ["ERAS", "Buffers", "EmuError", "Era", "Outcome", "Routine", "Settings", "State",
           "Target", "era_target", "get_target", "parse_cpu"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'emu' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
