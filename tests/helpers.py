"""Shared test helpers: the reduced-CI switch and small utilities every test module may use."""

import os


def _flag(value: str | None) -> bool:
    return value is not None and value.strip().lower() not in ("", "0", "false", "no")


#: Slow cases run in a reduced form (fewer sizes, shorter runs) when OLIVINE_REDUCED=1, and by
#: default under CI (which sets CI=true). OLIVINE_REDUCED=0 forces the full sweep anywhere.
REDUCED = _flag(os.environ["OLIVINE_REDUCED"]) if "OLIVINE_REDUCED" in os.environ else _flag(os.environ.get("CI"))
