"""cocotb testbenches (tb_*.py), run through olivine.sim.rtl.run_cocotb; pytest does not collect them."""
