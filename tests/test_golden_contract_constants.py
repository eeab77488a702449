"""golden/contract_constants.py: the contract's constants without torch, re-exported by the contract."""

from __future__ import annotations

import subprocess
import sys


def test_constants_import_without_torch_and_the_quant_cores_skip_the_contract():
    code = ("import sys\n"
            "import olivine.golden.contract_constants\n"
            "assert 'torch' not in sys.modules, 'contract_constants pulled in torch'\n"
            "import olivine.hw.sfu_quant, olivine.hw.sfu_ovp_quant\n"
            "assert 'olivine.golden.contract' not in sys.modules, 'an SFU quant core imports golden.contract'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_contract_reexports_the_same_values():
    from olivine.golden import contract, contract_constants
    for name in contract_constants.__all__:
        assert getattr(contract, name) is getattr(contract_constants, name), name
