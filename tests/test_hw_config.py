import pytest

from olivine.hw.config import DEFAULT_SHAPES, AcceleratorConfig, BufferConfig, ConfigError, for_board


def test_u280_default_is_the_shape_that_fits():
    # the largest power-of-two shape whose estimated logic and memories fit (hw/fit.py,
    # tests/test_hw_fit.py): 3 cores x 16 chains of 16, 8 SFU lanes = 3 x (256 + 32) = 864 DSP48E2
    cfg = for_board("u280")
    assert (cfg.cores, cfg.chains_per_core, cfg.sfu_dsp, cfg.hbm_channels) == (3, 16, 32, 32)
    assert cfg.dsp_count == 864
    assert cfg.macs_per_cycle == 2 * 3 * 16 * 16
    assert cfg.hbm_gbps == pytest.approx(460.0)


@pytest.mark.parametrize("board", ["u280", "u55c", "u50", "u250", "vhk158"])
def test_every_board_has_a_buildable_default(board):
    cfg = for_board(board)
    assert cfg.board == board
    # the matrix engine's chains come in powers of two (hw/mpe.py MpeGeometry)
    assert cfg.chains_per_core & (cfg.chains_per_core - 1) == 0


def test_board_defaults_come_from_the_shape_table():
    # DEFAULT_SHAPES (cores, chains, sfu_dsp) per board; overrides still win; a board without an entry
    # keeps the field defaults (which are the U280's)
    assert {b: (for_board(b).cores, for_board(b).chains_per_core, for_board(b).sfu_dsp) for b in DEFAULT_SHAPES} \
        == DEFAULT_SHAPES
    assert for_board("u280", chains_per_core=32).chains_per_core == 32
    assert (for_board("vhk158").chains_per_core, for_board("vhk158").sfu_dsp) == (16, 32)


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


# ---- named configurations and configuration files (olivine compile --config) --------------------

import json  # noqa: E402

from olivine.hw.config import CONFIGS, load_config, small, tiny  # noqa: E402


def test_named_configs_are_registered_and_small_is_one_small_core():
    assert set(CONFIGS) >= {"default", "small"}
    assert load_config("default") == for_board("u280")
    cfg = load_config("small")
    assert cfg == small() and cfg.board == "u280"
    assert (cfg.cores, cfg.chains_per_core, cfg.chain_length) == (1, 8, 16)
    assert cfg.dsp_count == 8 * 16 + cfg.sfu_dsp
    assert load_config("small", board="u55c").board == "u55c"


def test_tiny_is_small_with_a_cut_down_datapath():
    cfg = load_config("tiny")
    assert cfg == tiny() and cfg.buffers == small().buffers  # the same programs as small with 2 channels
    assert (cfg.chains_per_core, cfg.sfu_dsp, cfg.axi_data_width, cfg.hbm_channels) == (2, 16, 128, 2)


def _write(tmp_path, data, name="hw.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


def test_config_file_fields_override_the_boards_defaults(tmp_path):
    cfg = load_config(_write(tmp_path, {"cores": 2, "buffers": {"activation_kib": 2048}}))
    base = for_board("u280")
    assert cfg.cores == 2 and cfg.chains_per_core == base.chains_per_core
    assert cfg.buffers == BufferConfig(**{**base.buffers.__dict__, "activation_kib": 2048})
    assert load_config(_write(tmp_path, {"board": "u50"})).board == "u50"


@pytest.mark.parametrize("data, message", [
    ({"coers": 2}, r"unknown configuration fields \['coers'\]"),
    ({"buffers": {"activation": 9}}, r"buffers: unknown configuration fields \['activation'\]"),
    ({"cores": "2"}, "cores must be an integer"),
    ({"cores": True}, "cores must be an integer"),
    ({"clock_mhz": "fast"}, "clock_mhz must be a number"),
    ({"sparse_n": [16, "8"]}, "sparse_n must be a list of int"),
    ({"buffers": {"global_kib": 1.5}}, "global_kib must be an integer"),
    ({"buffers": 3}, "buffers must be an object"),
    ({"cores": 9}, "3 SLRs"),
    ({"buffers": {"weight_kib": 100000}}, "URAM needed"),
    ([1, 2], "expected an object"),
    ("{not json", "not readable JSON"),
])
def test_bad_config_files_name_the_file_and_the_problem(tmp_path, data, message):
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError, match=message) as err:
        load_config(path)
    assert path in str(err.value)


def test_config_file_for_another_board_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="drop one"):
        load_config(_write(tmp_path, {"board": "u50"}), board="u280")


def test_unknown_config_name_or_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="named configuration"):
        load_config("huge")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "none.json"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path))  # a directory is not a configuration file
