"""olivine.hw.resources: Yosys synth_xilinx cell counts, cascade links, unit registry and CLI.

Only two small syntheses run (marked synth); the first Yosys call on a machine also compiles
the WebAssembly (about 40 s, cached by YoWASP afterwards).
"""

import json

import pytest
from amaranth import ClockSignal, Instance, Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from olivine.hw import resources
from olivine.hw.resources import (ResourceReport, SynthesisError, UnitError, build_unit, classify_cells,
                                  count_cascade_links, hierarchy_cells, register_unit, synthesize)


class RegisteredMultiplier(wiring.Component):
    """p <= a * b, signed 16x16 -> 32 (one DSP48E2 multiplier)."""

    def __init__(self, width=16):
        self.width = width
        super().__init__({"a": In(signed(width)), "b": In(signed(width)),
                          "p": Out(signed(2 * width))})

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.p.eq(self.a * self.b)
        return m


class TwoDspCascade(wiring.Component):
    """Two DSP48E2 primitives, the first's PCOUT feeding the second's PCIN (P = A*B + PCIN)."""

    a: In(30)
    b: In(18)
    p: Out(48)

    def elaborate(self, platform):
        m = Module()
        cascade = Signal(48)
        unused_p = Signal(48)
        common = dict(p_USE_MULT="MULTIPLY", i_CLK=ClockSignal(), i_A=self.a, i_B=self.b,
                      i_ALUMODE=0)
        # OPMODE W=0, Z=0 (first) / Z=PCIN (second), Y:X = M
        m.submodules.first = Instance("DSP48E2", **common, i_OPMODE=0b000000101,
                                      o_PCOUT=cascade, o_P=unused_p)
        m.submodules.second = Instance("DSP48E2", **common, i_OPMODE=0b000010101,
                                       i_PCIN=cascade, o_P=self.p)
        return m


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OLIVINE_CACHE", str(tmp_path_factory.mktemp("olivine-cache")))
        yield


@pytest.mark.synth
def test_multiplier_maps_to_one_dsp48e2():
    report = synthesize(RegisteredMultiplier(16), "mul16")
    assert report.dsp48e2 == 1 and report.dsp == 1
    assert report.lut == 0 and report.carry == 0  # the product needs no fabric arithmetic
    assert report.bram36 == report.bram18 == report.uram == 0
    assert "IBUF" not in report.other_cells and "BUFG" not in report.other_cells
    assert report.cascade_total == 0
    again = synthesize(RegisteredMultiplier(16), "mul16")
    assert again.cached and again.to_dict() | {"cached": False} == report.to_dict()


@pytest.mark.synth
def test_dsp48e2_instances_count_and_cascade_is_found():
    report = synthesize(TwoDspCascade(), "two_dsp")
    assert report.dsp48e2 == 2
    assert report.cascade_links["PCOUT->PCIN"] == 1
    assert report.cascade_total == 1
    assert report.lut == 0 and report.ff == 0


def test_classify_cells_sorts_primitives():
    report = classify_cells({"LUT2": 5, "LUT6": 2, "LUT6_2": 1, "FDRE": 7, "FDSE": 1,
                             "CARRY8": 3, "DSP48E2": 4, "RAMB36E2": 2, "RAMB18E2": 1,
                             "URAM288": 1, "SRLC32E": 2, "MUXF7": 1, "MUXF8": 1,
                             "RAM64M8": 2, "INV": 1, "$scopeinfo": 5}, "t", "xcup")
    assert (report.lut, report.lut_by_size) == (8, {2: 5, 6: 3})
    assert (report.ff, report.carry, report.dsp48e2, report.dsp) == (8, 3, 4, 4)
    assert (report.bram36, report.bram18, report.uram) == (2, 1, 1)
    assert (report.srl, report.muxf, report.lutram) == (2, 2, 2)
    assert report.other_cells == {"INV": 1}
    xc7 = classify_cells({"DSP48E1": 3}, "t", "xc7")
    assert (xc7.dsp, xc7.dsp48e2) == (3, 0)


def test_cascade_links_follow_port_bits():
    def dsp(**ports):
        return {"type": "DSP48E2", "connections": ports}

    netlist = {"modules": {"chain": {"cells": {
        "d0": dsp(PCOUT=[10, 11], ACOUT=[20]),
        "d1": dsp(PCIN=[10, 11], PCOUT=[30, 31], ACIN=[20]),
        "d2": dsp(PCIN=[30, 31], BCIN=["0", "0"]),  # constant bits are not links
        "lut": {"type": "LUT2", "connections": {"I0": [30], "O": [40]}},
    }}}}
    links = count_cascade_links(netlist, "chain")
    assert links["PCOUT->PCIN"] == 2
    assert links["ACOUT->ACIN"] == 1
    assert links["BCOUT->BCIN"] == 0


#: A hierarchy with shared modules: top has two ``pair`` (each two ``counter``, 8-bit q <= q + a:
#: 8 flip-flops) and two ``cascade`` (two DSP48E2, PCOUT -> PCIN). Every instance has its own
#: inputs, so flattening merges nothing and must give the same flip-flops, DSPs and links.
HIERARCHY_VERILOG = """
module counter(input clk, input [7:0] a, output reg [7:0] q);
  always @(posedge clk) q <= q + a;
endmodule
module pair(input clk, input [7:0] a, input [7:0] b, output [7:0] qa, output [7:0] qb);
  counter ca(.clk(clk), .a(a), .q(qa));
  counter cb(.clk(clk), .a(b), .q(qb));
endmodule
module cascade(input clk, input [29:0] a, input [17:0] b, output [47:0] p);
  wire [47:0] pc;
  DSP48E2 #(.USE_MULT("MULTIPLY")) first(.CLK(clk), .A(a), .B(b), .ALUMODE(4'd0),
                                         .OPMODE(9'b000000101), .PCOUT(pc));
  DSP48E2 #(.USE_MULT("MULTIPLY")) second(.CLK(clk), .A(a), .B(b), .ALUMODE(4'd0),
                                          .OPMODE(9'b000010101), .PCIN(pc), .P(p));
endmodule
module hier_top(input clk, input [7:0] a0, b0, a1, b1, input [29:0] x0, x1, input [17:0] y0, y1,
                output [7:0] q0, q1, q2, q3, output [47:0] p0, p1);
  pair u0(.clk(clk), .a(a0), .b(b0), .qa(q0), .qb(q1));
  pair u1(.clk(clk), .a(a1), .b(b1), .qa(q2), .qb(q3));
  cascade c0(.clk(clk), .a(x0), .b(y0), .p(p0));
  cascade c1(.clk(clk), .a(x1), .b(y1), .p(p1));
endmodule
"""


def test_hierarchy_cells_counts_each_module_once_per_instance():
    stat = {"\\top": {"num_cells_by_type": {"mid": 2, "leaf": 1, "LUT2": 1}},
            "\\mid": {"num_cells_by_type": {"\\leaf": 3, "FDRE": 2}},
            "\\leaf": {"num_cells_by_type": {"LUT2": 5, "DSP48E2": 1}},
            "\\unused": {"num_cells_by_type": {"LUT6": 100}}}
    total, instances, own = hierarchy_cells(stat, "top")
    assert instances == {"leaf": 7, "mid": 2, "top": 1}  # 2 x 3 under the mids + 1 directly
    assert total == {"LUT2": 1 + 7 * 5, "FDRE": 2 * 2, "DSP48E2": 7}
    assert own["mid"] == {"FDRE": 2}
    with pytest.raises(SynthesisError, match="no module 'nope'"):
        hierarchy_cells(stat, "nope")
    with pytest.raises(SynthesisError, match="itself"):
        hierarchy_cells({"\\a": {"num_cells_by_type": {"b": 1}},
                         "\\b": {"num_cells_by_type": {"a": 1}}}, "a")


@pytest.mark.synth
def test_hierarchical_synthesis_sums_modules_times_instances():
    report = synthesize(HIERARCHY_VERILOG, "hier_top", flatten=False)
    assert report.hierarchical
    mods = report.modules
    assert {m: d["instances"] for m, d in mods.items()} == \
        {"counter": 4, "pair": 2, "cascade": 2, "hier_top": 1}
    assert report.ff == 4 * 8 and mods["counter"]["own"]["ff"] == 8
    assert report.dsp48e2 == 4 and mods["cascade"]["own"]["dsp"] == 2
    assert report.cascade_links["PCOUT->PCIN"] == 2
    assert report.lut == 4 * mods["counter"]["own"]["lut"] > 0
    assert mods["pair"]["total"]["ff"] == 16 and mods["hier_top"]["total"]["ff"] == report.ff
    assert mods["hier_top"]["total"]["dsp"] == report.dsp
    flat = synthesize(HIERARCHY_VERILOG, "hier_top")
    assert not flat.hierarchical and flat.modules == {}
    assert (flat.ff, flat.dsp48e2, flat.carry, flat.cascade_total) == \
        (report.ff, report.dsp48e2, report.carry, report.cascade_total)
    again = synthesize(HIERARCHY_VERILOG, "hier_top", flatten=False)
    assert again.cached and again.to_dict() | {"cached": False} == report.to_dict()


def test_report_round_trips_through_json():
    report = classify_cells({"LUT3": 2, "DSP48E2": 1}, "t", "xcup")
    report.cascade_links = {"PCOUT->PCIN": 0}
    back = ResourceReport.from_dict(json.loads(report.to_json()))
    assert back == report


def test_unknown_family_is_rejected():
    with pytest.raises(ValueError, match="xcup"):
        synthesize("module m; endmodule", "m", family="virtex9")


@pytest.fixture
def private_registry(monkeypatch):
    monkeypatch.setattr(resources, "UNITS", {})
    monkeypatch.setattr(resources, "_load_units", lambda: None)

    @register_unit("infra_multiplier")
    def factory(width: int = 16, registered: bool = True, name: str = "mul", scale=None):
        suffix = "" if scale is None else f"_s{scale!r}"
        return RegisteredMultiplier(width), f"{name}{width}{suffix}"

    return factory


def test_registry_builds_units_from_string_parameters(private_registry):
    component, top = build_unit("infra_multiplier", {"width": "8", "name": "m"})
    component._MustUse__silence = True  # built to inspect, not to elaborate
    assert top == "m8" and component.width == 8
    for raw, top_name in (("3", "mul16_s3"), ("1.5", "mul16_s1.5"), ("abc", "mul16_s'abc'")):
        component, top = build_unit("infra_multiplier", {"scale": raw})  # None default: literal
        component._MustUse__silence = True
        assert top == top_name


def test_registry_errors_list_the_valid_choices(private_registry):
    with pytest.raises(UnitError, match="registered units: infra_multiplier"):
        build_unit("nonexistent", {})
    with pytest.raises(UnitError, match=r"no parameter\(s\) depth.*width=16, registered=True"):
        build_unit("infra_multiplier", {"depth": "3"})
    with pytest.raises(UnitError, match="expects int"):
        build_unit("infra_multiplier", {"width": "wide"})
    with pytest.raises(UnitError, match="expects bool"):
        build_unit("infra_multiplier", {"registered": "maybe"})
    with pytest.raises(TypeError, match="needs a default"):
        register_unit("no_default")(lambda width: None)


def test_parse_param_args():
    assert resources.parse_param_args(["--length", "16", "--weight-format=int8", "--primitive"]) \
        == {"length": "16", "weight_format": "int8", "primitive": "true"}
    with pytest.raises(UnitError, match="--name value"):
        resources.parse_param_args(["16"])


def test_main_lists_units(private_registry, capsys):
    assert resources.main([]) == 0
    assert "infra_multiplier: --width 16" in capsys.readouterr().out


def test_cli_reports_bad_input_with_exit_code_2(private_registry, capsys):
    assert resources.cli("nonexistent", {}, "xcup", False) == 2
    assert "registered units: infra_multiplier" in capsys.readouterr().err
    assert resources.cli("infra_multiplier", {}, "xc99", False) == 2
    assert "unknown family" in capsys.readouterr().err


@pytest.mark.synth
def test_cli_json_and_table(private_registry, capsys):
    # same design as test_multiplier_maps_to_one_dsp48e2: served from the cache when run after it
    assert resources.cli("infra_multiplier", {"width": "16"}, "xcup", True) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["unit"] == "infra_multiplier" and data["dsp48e2"] == 1 and data["top"] == "mul16"
    assert resources.cli("infra_multiplier", {"width": "16"}, "xcup", False) == 0
    out = capsys.readouterr().out
    assert "DSP48E2" in out and "mul16" in out
