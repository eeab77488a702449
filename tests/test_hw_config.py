import pytest

from olivine.hw.config import AcceleratorConfig, BufferConfig, ConfigError, for_board


def test_u280_default_fits_and_matches_flightllm_scale():
    cfg = for_board("u280")
    assert cfg.cores == 3 and cfg.hbm_channels == 32
    # FlightLLM used 6,345 DSP48E2 on the U280; the default sits in the same range and fits.
    assert 6000 <= cfg.dsp_count <= cfg.board_facts.dsp48e2
    assert cfg.macs_per_cycle == 2 * 3 * cfg.chains_per_core * 16
    assert cfg.hbm_gbps == pytest.approx(460.0)


@pytest.mark.parametrize("board", ["u280", "u55c", "u50", "u250", "vhk158"])
def test_every_board_has_a_buildable_default(board):
    cfg = for_board(board)
    assert cfg.board == board


@pytest.mark.parametrize("changes, reason", [
    ({"chains_per_core": 1000}, "DSP48E2 needed"),
    ({"chain_length": 7}, "built in lengths 2, 4, 8, 16"),
    ({"chain_length": 24}, "built in lengths"),
    ({"cores": 4}, "SLRs"),
    ({"hbm_channels": 33}, "memory channels"),
    ({"ovp_rows": 0}, "both sizes positive"),
    ({"ovp_rows": 0, "ovp_cols": 0}, "ovp4 activations need the OVP array"),
    ({"weight_formats": ("int8", "fp8")}, "weight format 'fp8' unknown"),
    ({"sparse_n": (2, 4, 8)}, "must include 16"),
    ({"sparse_n": (3, 16)}, "sparse N=3"),
    ({"buffers": BufferConfig(weight_kib=64 * 1024)}, "URAM needed"),
    ({"board": "u9000"}, "unknown board"),
])
def test_impossible_configs_are_rejected_with_the_reason(changes, reason):
    with pytest.raises(ConfigError, match=reason):
        AcceleratorConfig(**changes)


def test_digest_roundtrip_and_sensitivity():
    cfg = for_board("u280")
    again = AcceleratorConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.digest() == cfg.digest()
    assert cfg.replace(clock_mhz=200.0).digest() != cfg.digest()
    with pytest.raises(ConfigError, match="unknown configuration fields"):
        AcceleratorConfig.from_dict({**cfg.to_dict(), "warp_drive": True})
