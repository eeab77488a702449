"""The integer contract's constants, torch-free (golden/contract.py re-exports them).

hardware (hw/) builds its tables from these without importing the torch-based contract: the INT8
code range, the per-row reciprocal's fractional bits of the dynamic INT8 rule, and the guard bits
of the OVP4 activation grid. docs/contract.md gives their meaning.
"""

from __future__ import annotations

__all__ = ["INT8_QMAX", "MULT_BITS", "OVP_ACT_GUARD_BITS", "RECIP_BITS"]

#: symmetric INT8: -127..127 (-128 is never produced)
INT8_QMAX = 127
#: requantization multipliers are unsigned 31-bit mantissas in [2**30, 2**31)
MULT_BITS = 31
#: fractional bits of the per-row reciprocal in quantize_act_dynamic_int8
RECIP_BITS = 22
#: fractional bits of x / scale before the OVP activation grid rounding (1/256 LSB)
OVP_ACT_GUARD_BITS = 8
