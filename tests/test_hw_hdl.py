"""olivine.hw.hdl: the whole core (core_for), `olivine hdl --artifact` and its refusals."""

from __future__ import annotations

import json

import pytest

from olivine.golden.loaders import load_model_config
from olivine.hw.config import ConfigError
from olivine.hw.hdl import ArtifactConfigError, core_for, read_artifact_facts
from olivine.hw.mpe import MatrixEngine
from olivine.sim.core_rtl import rtl_test_config


def _model_config() -> dict:
    """glassllm's config as `olivine compile` records it (compiler/compile.py to_artifact)."""
    c = load_model_config("glassllm")
    return {k: getattr(c, k) for k in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                                       "ffn_dim", "norm_eps", "rope_theta", "max_seq_len", "tie_embeddings",
                                       "name", "rope_scaling")}


def _artifact(tmp_path, config, *, buckets=(16, 32), **changes):
    """A compiled artifact's manifest.json: the parts `olivine hdl --artifact` reads."""
    manifest = {"schema_version": 2, "config": config.to_dict(), "config_digest": config.digest(), "files": {},
                "meta": {"model": {"name": "glassllm", "config": _model_config()},
                         "programs": {f"decode_{b}": {"kind": "decode", "bucket": b, "patches": [], "stats": {}}
                                      for b in buckets}}}
    manifest.update(changes)
    d = tmp_path / "art"
    d.mkdir(exist_ok=True)
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


def test_core_for_builds_the_engine_and_the_rope_rom_of_the_model():
    cfg = rtl_test_config()
    core = core_for(cfg, _model_config(), positions=24)
    assert isinstance(core.mpe, MatrixEngine) and core.mpe_problem is None
    rope = core.sfu.rope
    mc = _model_config()
    assert "rope" in core.sfu.ops
    assert (rope.positions, rope.head_dim, rope.theta) == (24, mc["head_dim"], float(mc["rope_theta"]))
    # without a model: no rope op; positions alone is a mistake
    plain = core_for(cfg)
    assert plain.sfu.rope is None and "rope" not in plain.sfu.ops and isinstance(plain.mpe, MatrixEngine)
    with pytest.raises(ValueError, match="model_config"):
        core_for(cfg, positions=24)
    assert core_for(cfg, mpe=False, sfu_ops=("add",)).mpe is None


@pytest.mark.parametrize("board", ["u280", "u55c", "u50", "u250"])
def test_the_default_core_of_every_board_has_its_matrix_engine(board):
    """The boards' defaults have a power of two of chains (16, hw.config.DEFAULT_SHAPES), so the
    engine is built: MM / MV run there (pv and sparse at any power of two, tests/test_hw_mpe.py at
    32 chains); the core passes the memory and logic checks (hw/fit.py)."""
    from olivine.hw.config import for_board

    cfg = for_board(board)
    core = core_for(cfg, mpe=True)
    assert isinstance(core.mpe, MatrixEngine) and core.mpe_problem is None
    assert core.mpe.chains == cfg.chains_per_core == 16
    assert core.mpe.geometry.wword_bytes == 16 * 16       # the 256-byte weight word
    assert [p.name for p in core.logic_estimate][0] == "engine"


def test_core_for_leaves_the_slot_empty_when_the_engine_cannot_be_built():
    cfg = rtl_test_config(chains_per_core=3)           # the engine needs a power of two
    core = core_for(cfg)
    assert core.mpe is None and "power of two" in core.mpe_problem
    with pytest.raises(ConfigError, match="power of two"):
        core_for(cfg, mpe=True)


def test_artifact_facts_take_the_config_and_the_longest_bucket(tmp_path):
    cfg = rtl_test_config()
    config, model, positions = read_artifact_facts(_artifact(tmp_path, cfg, buckets=(16, 48, 32)))
    assert config == cfg and model == _model_config() and positions == 48
    # never more positions than the model has
    _, _, positions = read_artifact_facts(_artifact(tmp_path, cfg, buckets=(16, 4096)))
    assert positions == _model_config()["max_seq_len"]


@pytest.mark.parametrize("damage,problem", [
    ("missing", "no manifest.json"),
    ("json", "not readable JSON"),
    ("digest", "config_digest"),
    ("config", "configuration is invalid"),
    ("model", "no model config"),
    ("rope", "lacks rope_theta"),
    ("buckets", "no program buckets"),
])
def test_a_bad_artifact_is_refused_with_its_problem(tmp_path, capsys, damage, problem):
    from olivine.cli import main

    cfg = rtl_test_config()
    d = _artifact(tmp_path, cfg)
    manifest = json.loads((d / "manifest.json").read_text())
    if damage == "missing":
        (d / "manifest.json").unlink()
    elif damage == "json":
        (d / "manifest.json").write_text("{not json")
    else:
        if damage == "digest":
            manifest["config_digest"] = "0" * 16
        elif damage == "config":
            manifest["config"]["axi_data_width"] = 100
        elif damage == "model":
            del manifest["meta"]["model"]["config"]
        elif damage == "rope":
            del manifest["meta"]["model"]["config"]["rope_theta"]
        elif damage == "buckets":
            manifest["meta"]["programs"] = {}
        (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactConfigError, match=problem):
        read_artifact_facts(d)
    out = tmp_path / "hdl"
    assert main(["hdl", "--artifact", str(d), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("olivine hdl: ") and problem in err and "olivine compile" in err
    assert not out.exists()


def test_artifact_and_config_together_or_another_board_are_refused(tmp_path, capsys):
    from olivine.cli import main

    d = _artifact(tmp_path, rtl_test_config())
    assert main(["hdl", "--artifact", str(d), "--config", "small", "-o", str(tmp_path / "o")]) == 1
    assert "not both" in capsys.readouterr().err
    assert main(["hdl", "--artifact", str(d), "--board", "u50", "-o", str(tmp_path / "o")]) == 1
    assert "compiled for board 'u280'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_hdl_from_an_artifact_builds_the_whole_core(tmp_path):
    from olivine.cli import main

    cfg = rtl_test_config()
    d = _artifact(tmp_path, cfg, buckets=(16, 32))
    out = tmp_path / "hdl"
    assert main(["hdl", "--artifact", str(d), "-o", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config_digest"] == cfg.digest()
    assert manifest["matrix_engine"] == {"built": True, "problem": None}
    assert manifest["rope_rom"]["positions"] == 32 and manifest["rope_rom"]["head_dim"] == _model_config()["head_dim"]
    assert "rope" in manifest["sfu_ops"]
    text = (out / "olivine_core.v").read_text()
    assert manifest["verilog_bytes"] == len(text.encode())
    assert "module \\olivine_core.mpe " in text and "olivine_core.sfu.core_rope" in text
