"""The exception tree: one root, ``EmuError``, one subclass per pipeline stage.

Expected kernel behaviour (a handled fault, a modelled panic) is never an exception: it is an
``Outcome``.  Exceptions here mean the harness could not do what it was asked.  The CLI turns
every ``EmuError`` into one line on stderr and exit code 2.
"""

from __future__ import annotations


class EmuError(Exception):
    """Root of every error emu raises on purpose."""


class UsageError(EmuError, ValueError):
    """The command line or an API call asked for something impossible."""


class InputError(EmuError):
    """A file or revision the user named cannot be read or is not what it should be."""


class OutputError(EmuError):
    """emu cannot write its output (a full disk, a closed standard output)."""


class AssembleError(EmuError):
    """The assembler rejected a source, or is not installed."""


class ImageError(EmuError):
    """An object file cannot be turned into an image (bad ELF, bad __ex_table, missing symbol)."""


class EmulationError(EmuError):
    """Unicorn failed in a way that is a harness problem, not kernel behaviour."""

    def __init__(self, message: str, *, pc: int | None = None, errno: int | None = None) -> None:
        super().__init__(message)
        self.pc = pc
        self.errno = errno


class MissingExtra(EmuError):
    """An optional feature needs a package that is not installed; the message names the
    pip extra that brings it (``pip install 'mce-emu[plot]'``)."""
