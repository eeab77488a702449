"""olivine: an open FPGA LLM accelerator (FlightLLM sparse DSP chains + OliVe OVP quantization).

The rooms install under this namespace: ``olivine.golden`` (numeric truth), ``olivine.hw``
(Amaranth generators), ``olivine.compiler``, ``olivine.sim`` and ``olivine.boards``.
``olivine.cli`` is the thin command line.
"""

__version__ = "0.1.0"
