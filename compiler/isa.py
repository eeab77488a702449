"""The instruction set, re-exported from :mod:`olivine.hw.isa`, its home: the format table is the
hardware's contract and ``hw/`` may not import ``compiler/``. ``from olivine.compiler.isa import
...`` keeps working for every public name."""

from olivine.hw.isa import *  # noqa: F401,F403
