"""cocotb testbench of the matrix engine (hw/mpe.py MpeHarness with stall=True), driven by
tests/test_hw_mpe.py::test_rtl_verilator_subset.

The buffers are loaded through the harness's host port; each case's instruction is offered on
``inst``, the engine runs under the given enable pattern (the core's EnableInserter freeze), and
after done / fault the whole data space is read back and compared with FuncSim's image.
Vectors (olivine.sim.rtl.load_vectors), from sim/mpe_check.py on the pytest side:
  loads     [L, 2 + D] uint32: memory (0 act, 1 weight, 2 meta, 3 bias), word address, data words
  load_ptr  [cases + 1]: the loads of case c are rows load_ptr[c] .. load_ptr[c + 1] - 1
  inst      [cases, I] uint32: the inst payload words
  want      [cases, 4 * act_words] uint32: the data space after the case
  want_fault [cases]: 1 if the case must fault
  enable    [E]: the enable pattern, cycled
"""

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from olivine.sim.rtl import join_words, load_vectors


@cocotb.test()
async def engine_matches_funcsim(dut):
    vec = load_vectors()
    loads, ptr = vec["loads"], [int(v) for v in vec["load_ptr"]]
    enable = [int(v) for v in vec["enable"]]
    act_words = vec["want"].shape[1] // 4
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    for name in ("inst__valid", "host_we", "host_rd", "en"):
        getattr(dut, name).value = 0
    await RisingEdge(dut.clk)
    await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    tick = 0
    for case in range(len(vec["inst"])):
        for row in loads[ptr[case]: ptr[case + 1]]:
            dut.host_mem.value = int(row[0])
            dut.host_addr.value = int(row[1])
            dut.host_data.value = join_words(row[2:])
            dut.host_we.value = 1
            await RisingEdge(dut.clk)
            await FallingEdge(dut.clk)
        dut.host_we.value = 0
        dut.inst__payload.value = join_words(vec["inst"][case])
        dut.inst__valid.value = 1
        accepted, finished, cycles = False, None, 0
        while finished is None:
            en = enable[tick % len(enable)]
            tick += 1
            dut.en.value = en
            await ReadOnly()
            if not accepted and int(dut.inst__ready.value):
                accepted = True
            elif accepted:
                if int(dut.done.value):
                    finished = "done"
                elif int(dut.fault.value):
                    finished = "fault"
            await RisingEdge(dut.clk)
            await FallingEdge(dut.clk)
            if accepted:
                dut.inst__valid.value = 0
            cycles += 1
            assert cycles < 200_000, f"case {case}: the engine did not finish"
        dut.en.value = 1
        assert (finished == "fault") == bool(vec["want_fault"][case]), f"case {case}: {finished}"
        # the harness's host read port has one cycle of latency: word w is on host_q after the
        # rising edge that sampled host_addr = w
        bad = []
        dut.host_rd.value = 1
        for w in range(act_words):
            dut.host_addr.value = w
            await RisingEdge(dut.clk)
            await FallingEdge(dut.clk)
            want = join_words(vec["want"][case][4 * w: 4 * w + 4])
            if int(dut.host_q.value) != want:
                bad.append(w)
        dut.host_rd.value = 0
        assert not bad, f"case {case}: {len(bad)} data-space words differ from funcsim (first: word {bad[0] if bad else 0})"
