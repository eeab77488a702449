"""Compiled artifacts: atomic writes, verification on load, clear errors."""

import json

import numpy as np
import pytest

from olivine.compiler.artifact import (Artifact, ArtifactError, parse_program, program_bytes, read_artifact,
                                       write_artifact)
from olivine.hw.config import for_board


@pytest.fixture
def artifact():
    programs = {"decode_16": np.arange(10, dtype=np.uint32), "prefill_128": np.array([6 | (1 << 12)], np.uint32)}
    weights = {0: b"\x01\x02\x03", 5: bytes(range(256))}
    return Artifact(for_board("u280"), programs, weights, {"model": "tiny"})


def test_round_trip(tmp_path, artifact):
    out = write_artifact(tmp_path / "a", artifact)
    back = read_artifact(out, expect_config=artifact.config)
    assert back.config == artifact.config and back.meta == {"model": "tiny"}
    assert set(back.programs) == set(artifact.programs)
    for name, words in artifact.programs.items():
        assert np.array_equal(back.programs[name], words)
    assert back.weights == artifact.weights


def test_rewrite_replaces_whole_directory(tmp_path, artifact):
    write_artifact(tmp_path / "a", artifact)
    artifact.weights = {1: b"x"}
    write_artifact(tmp_path / "a", artifact)
    assert sorted(p.name for p in (tmp_path / "a" / "weights").iterdir()) == ["ch01.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["a"]  # no temporary or backup directories left


def test_interrupted_write_leaves_nothing(tmp_path, artifact, monkeypatch):
    import olivine.compiler.artifact as mod

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(mod, "program_bytes", boom)
    with pytest.raises(OSError):
        write_artifact(tmp_path / "a", artifact)
    assert list(tmp_path.iterdir()) == []


def test_corruption_is_named(tmp_path, artifact):
    out = write_artifact(tmp_path / "a", artifact)
    (out / "weights" / "ch05.bin").write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="ch05.bin: corrupt"):
        read_artifact(out)


def test_missing_file_and_manifest(tmp_path, artifact):
    out = write_artifact(tmp_path / "a", artifact)
    (out / "programs" / "decode_16.olvp").unlink()
    with pytest.raises(ArtifactError, match="decode_16.olvp: listed in the manifest but missing"):
        read_artifact(out)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupt manifest"):
        read_artifact(out)
    with pytest.raises(ArtifactError, match="no such compiled artifact"):
        read_artifact(tmp_path / "nowhere")


def test_config_mismatch_and_schema(tmp_path, artifact):
    out = write_artifact(tmp_path / "a", artifact)
    with pytest.raises(ArtifactError, match="compiled for hardware configuration"):
        read_artifact(out, expect_config=for_board("u50"))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="schema version 99"):
        read_artifact(out)


def test_program_container_errors():
    data = program_bytes(np.arange(4, dtype=np.uint32))
    assert np.array_equal(parse_program(data), np.arange(4))
    with pytest.raises(ArtifactError, match="truncated"):
        parse_program(data[:-2])
    with pytest.raises(ArtifactError, match="not an olivine program"):
        parse_program(b"ELF\x00" + data[4:])
    with pytest.raises(ArtifactError, match="too short"):
        parse_program(b"OL")
