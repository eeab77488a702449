"""Behavioural model of the DSP48E2 slice features olivine uses, and the vendor primitive.

One description serves simulation and the vendor flow: ``DSP48E2(primitive=False)`` elaborates to
Amaranth logic that reproduces the slice cycle by cycle (Yosys has no simulation model of the
primitive); ``DSP48E2(primitive=True)`` elaborates to ``Instance("DSP48E2", ...)`` with the same
attributes and every input port tied, so Vivado / Yosys ``synth_xilinx`` map it to exactly one
slice and keep PCOUT -> PCIN / ACOUT -> ACIN / BCOUT -> BCIN cascade links.

Ports (all plain bit vectors, as on the primitive; the arithmetic is two's complement):
  in  A[30] ACIN[30] B[18] BCIN[18] C[48] D[27] PCIN[48]
  in  OPMODE[9]  (W = [8:7], Z = [6:4], Y = [3:2], X = [1:0])  ALUMODE[4]  INMODE[5]
  in  CARRYIN[1] CARRYINSEL[3]
  in  CEA1 CEA2 CEB1 CEB2 CEC CED CEAD CEM CEP CECTRL CEALUMODE CEINMODE CECARRYIN (init 1)
  in  RSTA RSTB RSTC RSTD RSTM RSTP RSTCTRL RSTALUMODE RSTINMODE RSTALLCARRYIN (init 0;
      synchronous, active high, priority over the clock enable)
  out P[48] PCOUT[48] (= P) ACOUT[30] BCOUT[18]

Constructor arguments are named like the vendor attributes: AREG, BREG (0/1/2), ACASCREG,
BCASCREG, CREG, DREG, ADREG, MREG, PREG, OPMODEREG, INMODEREG, ALUMODEREG, CARRYINREG,
CARRYINSELREG (0/1), AMULTSEL ("A"/"AD"), BMULTSEL ("B"/"AD"), A_INPUT / B_INPUT
("DIRECT"/"CASCADE"), RND (48-bit constant for W = 10).

Datapath modelled (UG579 / reference/dsp48e2.md):
  - A path: AREG = 1 is the A2 register (CEA2), A1 is bypassed; AREG = 2 is A1 (CEA1) then A2.
    INMODE[0] = 1 selects the A1 output (the A input itself when A1 is bypassed), else A2. Only
    A[26:0] reaches the pre-adder/multiplier; INMODE[1] = 1 zeroes it. ACOUT is A1 when
    AREG = 2 and ACASCREG = 1, else the A2 output. B is the same with INMODE[4], CEB1/CEB2.
  - Pre-adder AD = (INMODE[2] ? D : 0) +/- A (INMODE[3] = 1: D - A), wrapping at 27 bits,
    registered by ADREG (CEAD, reset by RSTD). BMULTSEL = "AD" feeds AD[17:0] to the multiplier.
  - 27 x 18 signed multiply into M (45 bits), registered by MREG. The model puts the whole
    product on X when X = 01 and counts Y = 01 as zero: silicon only gives the product when both
    X and Y select M (OPMODE[3:0] = 0101), the only setting olivine uses.
  - W: 0 / P / RND / C.  X: 0 / M / P / A:B.  Y: 0 / M / all ones / C.
    Z: 000 0, 001 PCIN, 010 P, 011 C, 100 P, 101 PCIN >>> 17, 11x P >>> 17.
  - ALU (ALUMODE[3:2] = 00 only): P = (W + X + Y + (Z ^ ALUMODE[0]) + CIN) ^ ALUMODE[1];
    ALUMODE 0000 adds, 0011 gives Z - (W + X + Y + CIN). CIN = CARRYIN when CARRYINSEL = 000
    (other carry sources are not modelled and read as 0).
  Not modelled: logic unit (ALUMODE[2] = 1), SIMD, pattern detect, carry cascade, wide XOR,
  PREADDINSEL = "B". With PREG = 0 the P feedback sources read 0 (on silicon they would form a
  combinational loop; olivine never selects them without PREG).

Latency: for A * B with AREG = BREG = MREG = PREG = 1 and X = Y = M, Z = 0, P holds the
product 3 rising edges after A and B are applied; through the pre-adder (AREG = DREG = ADREG = 1,
BREG = 2) 4 edges. Every *REG defaults to 1 (controls are registered: they act a cycle later).
Throughput: one multiply-add per cycle.

Registers have no implicit (domain) reset, like the silicon: only the RST* ports clear them, and
they start at 0 (the state after the vendor model's global set/reset).
"""

from __future__ import annotations

from amaranth.hdl import Cat, ClockSignal, Const, Instance, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .resources import register_unit

__all__ = ["DSP48E2", "DSP48E2ConfigError", "opmode", "OPMODE_MUL", "OPMODE_MUL_PCIN", "OPMODE_MUL_ACC"]


class DSP48E2ConfigError(ValueError):
    """An attribute value the DSP48E2 (or this model of it) does not accept."""


def opmode(*, w: int = 0, z: int = 0, y: int = 0, x: int = 0) -> int:
    """Pack the four multiplexer selects into the 9-bit OPMODE value."""
    for name, val, bits in (("w", w, 2), ("z", z, 3), ("y", y, 2), ("x", x, 2)):
        if not 0 <= val < (1 << bits):
            raise DSP48E2ConfigError(f"OPMODE field {name}={val} does not fit {bits} bits")
    return (w << 7) | (z << 4) | (y << 2) | x


#: P = M (X = Y = M, Z = 0).
OPMODE_MUL = opmode(x=0b01, y=0b01, z=0b000)
#: P = M + PCIN (cascade).
OPMODE_MUL_PCIN = opmode(x=0b01, y=0b01, z=0b001)
#: P = M + P (accumulate).
OPMODE_MUL_ACC = opmode(x=0b01, y=0b01, z=0b010)

_INPUT_WIDTHS = {
    "A": 30, "ACIN": 30, "B": 18, "BCIN": 18, "C": 48, "D": 27, "PCIN": 48,
    "OPMODE": 9, "ALUMODE": 4, "INMODE": 5, "CARRYIN": 1, "CARRYINSEL": 3,
}
_CLOCK_ENABLES = ("CEA1", "CEA2", "CEB1", "CEB2", "CEC", "CED", "CEAD", "CEM", "CEP",
                  "CECTRL", "CEALUMODE", "CEINMODE", "CECARRYIN")
_RESETS = ("RSTA", "RSTB", "RSTC", "RSTD", "RSTM", "RSTP", "RSTCTRL", "RSTALUMODE",
           "RSTINMODE", "RSTALLCARRYIN")
_OUTPUT_WIDTHS = {"P": 48, "PCOUT": 48, "ACOUT": 30, "BCOUT": 18}


def _check_choice(name, value, choices):
    if value not in choices:
        raise DSP48E2ConfigError(f"{name}={value!r} is not supported; expected one of {choices}")


class DSP48E2(wiring.Component):
    """DSP48E2 slice: behavioural model (default) or vendor primitive (``primitive=True``).

    See the module docstring for ports, modelled features, latency and throughput.
    """

    def __init__(self, *, AREG: int = 1, BREG: int = 1, ACASCREG: int | None = None,
                 BCASCREG: int | None = None, CREG: int = 1, DREG: int = 1, ADREG: int = 1,
                 MREG: int = 1, PREG: int = 1, OPMODEREG: int = 1, INMODEREG: int = 1,
                 ALUMODEREG: int = 1, CARRYINREG: int = 1, CARRYINSELREG: int = 1,
                 AMULTSEL: str = "A", BMULTSEL: str = "B", A_INPUT: str = "DIRECT",
                 B_INPUT: str = "DIRECT", RND: int = 0, primitive: bool = False):
        _check_choice("AREG", AREG, (0, 1, 2))
        _check_choice("BREG", BREG, (0, 1, 2))
        ACASCREG = AREG if ACASCREG is None else ACASCREG
        BCASCREG = BREG if BCASCREG is None else BCASCREG
        for reg, casc, name in ((AREG, ACASCREG, "A"), (BREG, BCASCREG, "B")):
            allowed = (1, 2) if reg == 2 else (reg,)
            if casc not in allowed:
                raise DSP48E2ConfigError(
                    f"{name}CASCREG={casc} with {name}REG={reg}: must be one of {allowed} "
                    f"({name}CASCREG equals {name}REG unless {name}REG = 2)")
        for name, val in (("CREG", CREG), ("DREG", DREG), ("ADREG", ADREG), ("MREG", MREG),
                          ("PREG", PREG), ("OPMODEREG", OPMODEREG), ("INMODEREG", INMODEREG),
                          ("ALUMODEREG", ALUMODEREG), ("CARRYINREG", CARRYINREG),
                          ("CARRYINSELREG", CARRYINSELREG)):
            _check_choice(name, val, (0, 1))
        _check_choice("AMULTSEL", AMULTSEL, ("A", "AD"))
        _check_choice("BMULTSEL", BMULTSEL, ("B", "AD"))
        _check_choice("A_INPUT", A_INPUT, ("DIRECT", "CASCADE"))
        _check_choice("B_INPUT", B_INPUT, ("DIRECT", "CASCADE"))
        if not 0 <= int(RND) < (1 << 48):
            raise DSP48E2ConfigError(f"RND={RND} does not fit 48 unsigned bits")
        self.attributes = dict(
            AREG=AREG, BREG=BREG, ACASCREG=ACASCREG, BCASCREG=BCASCREG, CREG=CREG, DREG=DREG,
            ADREG=ADREG, MREG=MREG, PREG=PREG, OPMODEREG=OPMODEREG, INMODEREG=INMODEREG,
            ALUMODEREG=ALUMODEREG, CARRYINREG=CARRYINREG, CARRYINSELREG=CARRYINSELREG,
            AMULTSEL=AMULTSEL, BMULTSEL=BMULTSEL, A_INPUT=A_INPUT, B_INPUT=B_INPUT, RND=int(RND))
        self.primitive = bool(primitive)
        members = {name: In(width) for name, width in _INPUT_WIDTHS.items()}
        members.update({name: In(1, init=1) for name in _CLOCK_ENABLES})
        members.update({name: In(1) for name in _RESETS})
        members.update({name: Out(width) for name, width in _OUTPUT_WIDTHS.items()})
        super().__init__(members)

    # -- elaboration -------------------------------------------------------------------------

    def elaborate(self, platform):
        return self._elaborate_primitive() if self.primitive else self._elaborate_model()

    def _elaborate_primitive(self):
        m = Module()
        at = self.attributes
        params = {f"p_{k}": v for k, v in at.items() if k != "RND"}
        params["p_RND"] = Const(at["RND"], 48)
        ports = {f"i_{name}": getattr(self, name) for name in _INPUT_WIDTHS}
        ports.update({f"i_{name}": getattr(self, name) for name in _CLOCK_ENABLES + _RESETS})
        ports.update({f"o_{name}": getattr(self, name) for name in _OUTPUT_WIDTHS})
        m.submodules.slice = Instance(
            "DSP48E2",
            p_PREADDINSEL="A", p_USE_MULT="MULTIPLY", p_USE_SIMD="ONE48",
            i_CLK=ClockSignal(), i_CARRYCASCIN=Const(0, 1), i_MULTSIGNIN=Const(0, 1),
            **params, **ports)
        return m

    def _elaborate_model(self):
        m = Module()
        at = self.attributes

        def reg(enabled, value, ce, rst, name):
            """A slice register (reset priority over enable), or a wire when not enabled."""
            if not enabled:
                return value
            q = Signal.like(value, name=name, reset_less=True, init=0)
            # a plain expression, not If/Elif: the Verilog backend turns those into casez
            # statements without a default, which -Wall flags (CASEINCOMPLETE)
            m.d.sync += q.eq(Mux(rst, 0, Mux(ce, value, q)))
            return q

        def wire(shape, value, name):
            s = Signal(shape, name=name)
            m.d.comb += s.eq(value)
            return s

        # Control registers.
        inmode = reg(at["INMODEREG"], self.INMODE, self.CEINMODE, self.RSTINMODE, "inmode_q")
        opmode_ = reg(at["OPMODEREG"], self.OPMODE, self.CECTRL, self.RSTCTRL, "opmode_q")
        alumode = reg(at["ALUMODEREG"], self.ALUMODE, self.CEALUMODE, self.RSTALUMODE, "alumode_q")
        carryinsel = reg(at["CARRYINSELREG"], self.CARRYINSEL, self.CECTRL, self.RSTCTRL,
                         "carryinsel_q")
        carryin = reg(at["CARRYINREG"], self.CARRYIN, self.CECARRYIN, self.RSTALLCARRYIN,
                      "carryin_q")

        # A and B input registers (A1/A2, B1/B2).
        def operand_path(name, direct, cascade, areg, cascreg, use_cascade, ce1, ce2, rst):
            src = cascade if use_cascade else direct
            r1 = reg(areg == 2, src, ce1, rst, f"{name}1_q")   # bypassed unless xREG = 2
            r2 = reg(areg >= 1, r1 if areg == 2 else src, ce2, rst, f"{name}2_q")
            cascade_out = r1 if (areg == 2 and cascreg == 1) else r2
            return r1, r2, cascade_out

        a1, a2, acout = operand_path("a", self.A, self.ACIN, at["AREG"], at["ACASCREG"],
                                     at["A_INPUT"] == "CASCADE", self.CEA1, self.CEA2, self.RSTA)
        b1, b2, bcout = operand_path("b", self.B, self.BCIN, at["BREG"], at["BCASCREG"],
                                     at["B_INPUT"] == "CASCADE", self.CEB1, self.CEB2, self.RSTB)
        m.d.comb += [self.ACOUT.eq(acout), self.BCOUT.eq(bcout)]

        a_sel = wire(signed(27), Mux(inmode[0], a1, a2)[:27], "a_mult_src")
        a_pre = wire(signed(27), Mux(inmode[1], 0, a_sel), "a_preadd")
        b_sel = wire(signed(18), Mux(inmode[4], b1, b2), "b_mult_src")

        # Pre-adder: 27-bit wrap.
        d_q = reg(at["DREG"], self.D, self.CED, self.RSTD, "d_q")
        d_pre = wire(signed(27), Mux(inmode[2], d_q, 0), "d_preadd")
        ad_sum = wire(signed(27), Mux(inmode[3], d_pre - a_pre, d_pre + a_pre), "ad_sum")
        ad = reg(at["ADREG"], ad_sum, self.CEAD, self.RSTD, "ad_q")

        mult_a = ad if at["AMULTSEL"] == "AD" else a_pre
        mult_b = wire(signed(18), ad[:18], "ad_low") if at["BMULTSEL"] == "AD" else b_sel
        product = wire(signed(45), mult_a * mult_b, "product")
        mreg = reg(at["MREG"], product, self.CEM, self.RSTM, "m_q")

        c_q = reg(at["CREG"], self.C, self.CEC, self.RSTC, "c_q")
        p_q = Signal(48, name="p_q", reset_less=True) if at["PREG"] else None
        p_fb = p_q if p_q is not None else Const(0, 48)  # P feedback needs PREG (see docstring)

        m_ext = wire(signed(48), mreg, "m_ext")
        pcin = wire(signed(48), self.PCIN, "pcin_s")
        p_fb_s = wire(signed(48), p_fb, "p_feedback")

        w = Signal(48, name="w_mux")
        x = Signal(48, name="x_mux")
        y = Signal(48, name="y_mux")
        z = Signal(48, name="z_mux")
        with m.Switch(opmode_[7:9]):
            with m.Case(0b01):
                m.d.comb += w.eq(p_fb)
            with m.Case(0b10):
                m.d.comb += w.eq(at["RND"])
            with m.Case(0b11):
                m.d.comb += w.eq(c_q)
            with m.Default():
                m.d.comb += w.eq(0)
        with m.Switch(opmode_[0:2]):
            with m.Case(0b01):
                m.d.comb += x.eq(m_ext)
            with m.Case(0b10):
                m.d.comb += x.eq(p_fb)
            with m.Case(0b11):
                m.d.comb += x.eq(Cat(b2, a2))
            with m.Default():
                m.d.comb += x.eq(0)
        with m.Switch(opmode_[2:4]):
            with m.Case(0b10):
                m.d.comb += y.eq((1 << 48) - 1)
            with m.Case(0b11):
                m.d.comb += y.eq(c_q)
            with m.Default():
                m.d.comb += y.eq(0)   # 00, and 01 (M is counted on X, see docstring)
        with m.Switch(opmode_[4:7]):
            with m.Case(0b001):
                m.d.comb += z.eq(self.PCIN)
            with m.Case(0b010, 0b100):
                m.d.comb += z.eq(p_fb)
            with m.Case(0b011):
                m.d.comb += z.eq(c_q)
            with m.Case(0b101):
                m.d.comb += z.eq(pcin >> 17)
            with m.Case(0b110, 0b111):
                m.d.comb += z.eq(p_fb_s >> 17)
            with m.Default():
                m.d.comb += z.eq(0)

        cin = wire(1, Mux(carryinsel == 0, carryin, 0), "carry_in")
        z_inv = wire(48, z ^ alumode[0].replicate(48), "z_inv")
        alu_sum = wire(48, w + x + y + z_inv + cin, "alu_sum")
        alu_out = wire(48, alu_sum ^ alumode[1].replicate(48), "alu_out")

        if p_q is not None:
            m.d.sync += p_q.eq(Mux(self.RSTP, 0, Mux(self.CEP, alu_out, p_q)))
            m.d.comb += self.P.eq(p_q)
        else:
            m.d.comb += self.P.eq(alu_out)
        m.d.comb += self.PCOUT.eq(self.P)
        return m



@register_unit("dsp48e2")
def _resource_unit(primitive: bool = True, AREG: int = 1, BREG: int = 2, CREG: int = 1,
                   DREG: int = 1, ADREG: int = 1, MREG: int = 1, PREG: int = 1,
                   AMULTSEL: str = "AD", BMULTSEL: str = "B", A_INPUT: str = "DIRECT",
                   B_INPUT: str = "DIRECT"):
    """One slice, by default configured for the WP486 INT8 x2 packing (AD pre-adder, BREG = 2)."""
    slice_ = DSP48E2(AREG=AREG, BREG=BREG, CREG=CREG, DREG=DREG, ADREG=ADREG, MREG=MREG,
                     PREG=PREG, AMULTSEL=AMULTSEL, BMULTSEL=BMULTSEL, A_INPUT=A_INPUT,
                     B_INPUT=B_INPUT, primitive=bool(primitive))
    return slice_, "dsp48e2_unit"
