"""emu: run the x86-64 kernel user-copy routines under Unicorn with injected #PF and #MC.

The public surface is small; everything else is internal and may change.
"""

from __future__ import annotations

from emu.kernel.eras import ERAS, Era, Routine, parse_cpu
from emu.errors import EmuError
from emu.core.machine import Buffers, State
from emu.kernel.outcome import Outcome
from emu.build.target import Settings, Target, era_target, get_target

__all__ = ["ERAS", "Buffers", "EmuError", "Era", "Outcome", "Routine", "Settings", "State",
           "Target", "era_target", "get_target", "parse_cpu"]
__version__ = "0.1.0"
