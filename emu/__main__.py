"""``python -m emu``."""

import sys

from emu.cli.main import main

sys.exit(main())
