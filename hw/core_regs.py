"""The core's control register map (AXI4-Lite slave ``s_axi_control``, 32-bit registers).

One table, :data:`REGISTERS`, is the contract between the core's register block (hw/core.py), the
simulation harnesses (cocotb and the plain C++ one, sim/), the Alveo kernel files (kernel.xml
argument offsets) and the host runtime. Offsets 0x00-0x0C follow Vitis' ``ap_ctrl_hs`` block
(alveo-kernel.md); kernel arguments start at 0x10.

Access: ``rw`` read/write, ``ro`` read-only, ``cor`` clear on read, ``w1c`` write 1 to clear.
Per-unit counters sit at ``UNIT_BASE + UNIT_STRIDE * u`` (u = index in hw.isa.UNITS: ld, st, mpe,
sfu), per-channel HBM byte counters at ``HBM_BASE + HBM_STRIDE * k``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Register", "REGISTERS", "CTRL_BITS", "UNIT_BASE", "UNIT_STRIDE", "UNIT_COUNTERS", "HBM_BASE",
           "HBM_STRIDE", "HBM_COUNTERS", "MAGIC", "ADDRESS_BITS", "offset", "unit_offset", "hbm_offset"]

#: 0xF0 reads this: "OLVN".
MAGIC = 0x4F4C564E
#: Address bits of the register space (4 KiB, far inside XRT's 64 KiB window).
ADDRESS_BITS = 12

#: Bits of CTRL (0x00): ap_start (write 1 to start; reads 1 until the core accepts it), ap_done
#: (set when the program ends, with or without error; cleared by reading CTRL), ap_idle, ap_ready.
CTRL_BITS = {"ap_start": 0, "ap_done": 1, "ap_idle": 2, "ap_ready": 3}


@dataclass(frozen=True)
class Register:
    name: str
    offset: int
    access: str
    doc: str


UNIT_BASE, UNIT_STRIDE = 0x50, 0x10
#: Per unit, in this order at +0, +4, +8, +12 (cycles since start, saturating 32-bit counters).
UNIT_COUNTERS = ("busy", "stall_token", "stall_memory", "instructions")
HBM_BASE, HBM_STRIDE = 0x100, 0x8
#: Per HBM channel: bytes read, bytes written (32-bit, wrapping), at +0 and +4.
HBM_COUNTERS = ("read_bytes", "write_bytes")

REGISTERS: tuple[Register, ...] = (
    Register("ctrl", 0x00, "rw", "ap_ctrl_hs: bit0 ap_start, bit1 ap_done (clear on read), bit2 ap_idle, bit3 ap_ready"),
    Register("gie", 0x04, "rw", "global interrupt enable (bit0)"),
    Register("ier", 0x08, "rw", "interrupt enable: bit0 done"),
    Register("isr", 0x0C, "w1c", "interrupt status: bit0 done; write 1 to clear"),
    Register("prog_addr_lo", 0x10, "rw", "program byte address in its HBM channel, low word (4-byte aligned)"),
    Register("prog_addr_hi", 0x14, "rw", "program byte address, high word"),
    Register("prog_words", 0x18, "rw", "program length in 32-bit words (>= 1)"),
    Register("prog_channel", 0x1C, "rw", "HBM channel holding the program (one beyond the channels: error, cause prog_channel)"),
    Register("watchdog", 0x20, "rw", "cycles without progress before the watchdog fires (0: never)"),
    Register("state", 0x28, "ro", "0 idle, 1 running, 2 done, 3 error (hw.controller.STATES)"),
    Register("cause", 0x2C, "ro", "error cause, index into hw.controller.STATUS_CAUSES"),
    Register("field", 0x30, "ro", "decode error: the offending field, index into hw.isa.FIELD_NAMES"),
    Register("offset", 0x34, "ro", "word offset of the offending instruction"),
    Register("unit_error", 0x38, "ro", "unit_fault: bits [3:0] the unit (hw.isa.UNITS index), bits [15:8] its own error code"),
    Register("cycles_lo", 0x40, "ro", "cycles from start to done, low word"),
    Register("cycles_hi", 0x44, "ro", "cycles from start to done, high word"),
    *(Register(f"stuck_{u}", 0x90 + 4 * i, "ro", f"deadlock/watchdog: bit31 valid (0 after a run ends done), bits [23:0] word offset unit {u} is on")
      for i, u in enumerate(("ld", "st", "mpe", "sfu"))),
    Register("magic", 0xF0, "ro", "0x4F4C564E ('OLVN')"),
    Register("version", 0xF4, "ro", "register map version (1)"),
    Register("config_digest", 0xF8, "ro", "low 32 bits of the AcceleratorConfig digest the core was built for"),
)


def offset(name: str) -> int:
    """Byte offset of the named register."""
    for r in REGISTERS:
        if r.name == name:
            return r.offset
    raise KeyError(f"no register named {name!r}; known: {', '.join(r.name for r in REGISTERS)}")


def unit_offset(unit: int, counter: str) -> int:
    """Byte offset of a per-unit counter (:data:`UNIT_COUNTERS`)."""
    return UNIT_BASE + UNIT_STRIDE * unit + 4 * UNIT_COUNTERS.index(counter)


def hbm_offset(channel: int, counter: str) -> int:
    """Byte offset of a per-channel HBM byte counter (:data:`HBM_COUNTERS`); channels 0..31."""
    if not 0 <= channel < 32:
        raise ValueError(f"HBM channel {channel} is outside 0..31")
    return HBM_BASE + HBM_STRIDE * channel + 4 * HBM_COUNTERS.index(counter)
