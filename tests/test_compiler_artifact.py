"""Compiled artifacts: atomic writes that never replace foreign data, strict verification on load."""

import copy
import json
import os
import random
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from olivine.compiler.artifact import (SCHEMA_VERSION, Artifact, ArtifactError, manifest_digest,
                                       parse_program, program_bytes, read_artifact, write_artifact)
from olivine.hw.config import for_board
from olivine.outputs import MARKER as MARKER_FILE, OutputError

from .helpers import REDUCED


@pytest.fixture(scope="module")
def compiled():
    """A small real artifact: glassllm w8a8, one prefill bucket and one decode bucket."""
    from olivine.compiler.compile import compile_model, to_artifact
    from olivine.compiler.spec import spec_from_qllama
    from olivine.golden.loaders import load_model
    from olivine.golden.qmodel import quantize_model

    loaded = load_model("glassllm")
    q = quantize_model(loaded.config, loaded.weights, "w8a8")
    comp = compile_model(spec_from_qllama(q, "glassllm"), for_board("u280"), max_context=16, max_prompt=16)
    return to_artifact(comp)


@pytest.fixture
def artifact(compiled):
    return copy.deepcopy(compiled)


@pytest.fixture(scope="module")
def written(compiled, tmp_path_factory):
    return write_artifact(tmp_path_factory.mktemp("art") / "glass", compiled)


def _same(a: Artifact, b: Artifact) -> bool:
    return (a.config == b.config and a.weights == b.weights and json.dumps(a.meta, sort_keys=True) ==
            json.dumps(b.meta, sort_keys=True) and set(a.programs) == set(b.programs)
            and all(np.array_equal(a.programs[k], b.programs[k]) for k in a.programs))


class _Whole:
    """A replacement of the whole manifest (by a list, null, a number ...)."""

    def __init__(self, value):
        self.value = value


def _edit(directory: Path, change, redigest: bool = True) -> None:
    """Apply ``change(manifest)`` to the manifest; re-sign it like a careful hand edit would."""
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    result = change(manifest)
    manifest = result.value if isinstance(result, _Whole) else manifest
    if redigest and isinstance(manifest, dict):
        manifest["manifest_sha256"] = manifest_digest(manifest)
    path.write_text(json.dumps(manifest))


@pytest.fixture
def copy_of(written, tmp_path):
    out = tmp_path / "glass"
    shutil.copytree(written, out, symlinks=True)
    return out


# ---- writing ----------------------------------------------------------------------------------

def test_round_trip(tmp_path, artifact):
    out = write_artifact(tmp_path / "a", artifact)
    back = read_artifact(out, expect_config=artifact.config)
    assert _same(back, artifact)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", MARKER_FILE, "programs", "weights"]


def test_rewrite_replaces_an_earlier_artifact(tmp_path, artifact):
    write_artifact(tmp_path / "a", artifact)
    artifact.meta["compile_seconds"] = 123.0
    write_artifact(tmp_path / "a", artifact)
    assert read_artifact(tmp_path / "a").meta["compile_seconds"] == 123.0
    assert [p.name for p in tmp_path.iterdir()] == ["a"]  # no temporary or backup directories left


def test_schema_1_artifact_is_replaced(tmp_path, artifact):
    old = tmp_path / "old"
    (old / "weights").mkdir(parents=True)
    (old / "weights" / "ch00.bin").write_bytes(b"x")
    (old / "manifest.json").write_text(json.dumps({"schema_version": 1, "config_digest": "0" * 16, "files": {}}))
    write_artifact(old, artifact)
    assert _same(read_artifact(old), artifact)


def test_a_user_directory_or_file_is_never_replaced(tmp_path, artifact):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.csv").write_text("precious")
    with pytest.raises(OutputError, match="not an olivine 'artifact' output"):
        write_artifact(mine, artifact)
    assert [p.name for p in mine.iterdir()] == ["results.csv"]
    notes = tmp_path / "notes.txt"
    notes.write_text("precious")
    with pytest.raises(OutputError, match="existing file"):
        write_artifact(notes, artifact)
    assert notes.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "notes.txt"]  # no .notes.txt.old-PID


def test_interrupted_write_leaves_nothing(tmp_path, artifact, monkeypatch):
    import olivine.compiler.artifact as mod

    real = Path.write_bytes

    def boom(self, data):
        if self.name == "ch03.bin":
            raise OSError("disk full")
        return real(self, data)

    monkeypatch.setattr(mod.Path, "write_bytes", boom)
    with pytest.raises(OSError, match="disk full"):
        write_artifact(tmp_path / "a", artifact)
    assert list(tmp_path.iterdir()) == []


def test_an_artifact_that_would_not_load_is_not_written(tmp_path, artifact):
    del artifact.weights[7]
    with pytest.raises(ArtifactError, match="no weight image for channel.* 7"):
        write_artifact(tmp_path / "a", artifact)
    assert list(tmp_path.iterdir()) == []


# ---- reading: every item of the fuzz campaign --------------------------------------------------

def _set(path: str, value):
    def change(m):
        *parents, last = path.split(":")
        node = m
        for key in parents:
            node = node[key]
        node[last] = value
    return change


def _first_program(m):
    return next(k for k, v in m["files"].items() if v["kind"] == "program")


CORRUPTIONS = {
    "list manifest": (lambda m: _Whole([]), "top level: .* is not of type 'object'"),
    "null manifest": (lambda m: _Whole(None), "not of type 'object'"),
    "number manifest": (lambda m: _Whole(3), "not of type 'object'"),
    "files entry without bytes": (lambda m: m["files"]["weights/ch03.bin"].pop("bytes"), "'bytes' is a required"),
    "channel 99": (_set("files:weights/ch03.bin:channel", 99), "channel 99, but the layout has channels 0..31"),
    "channel of another file": (_set("files:weights/ch03.bin:channel", 4), "recorded as channel 4"),
    "layout channels 0": (_set("meta:layout:channels", 0), r"layout.channels: 0 is less than the minimum of 1"),
    "layout channels 16": (_set("meta:layout:channels", 16), "channels = 16, but the configuration has 32"),
    "prefill_rows 0": (_set("meta:prefill_rows", 0), "prefill_rows: 0 is less than the minimum of 1"),
    "prefill_rows 3": (_set("meta:prefill_rows", 3), "not a power of two"),
    "schema 1.0": (_set("schema_version", 1.0), r"schema version 1.0, this olivine reads 2; recompile"),
    "schema true": (_set("schema_version", True), r"schema version True, this olivine reads 2"),
    "schema 1": (_set("schema_version", 1), r"schema version 1, this olivine reads 2; recompile"),
    "kind bogus": (_set("files:weights/ch03.bin:kind", "bogus"), "'bogus' is not one of"),
    "weight file dropped": (lambda m: m["files"].pop("weights/ch05.bin"), "no weight image for channel.* 5"),
    "absolute path": (lambda m: m["files"].update({"/etc/hostname": m["files"].pop("weights/ch03.bin")}),
                      "'/etc/hostname' does not match"),
    "absolute path, bare entry": (lambda m: m["files"].update({"/etc/hostname": {}}),
                                  r"\$.files: '/etc/hostname' does not match"),
    "path leaving": (lambda m: m["files"].update({"../x": m["files"].pop("weights/ch03.bin")}),
                     "'../x' does not match"),
    "bytes as float": (_set("files:weights/ch03.bin:bytes", 45568.0), "not of type 'integer'"),
    "vocab 0": (_set("meta:model:config:vocab_size", 0), "vocab_size: 0 is less than the minimum"),
    "logits outside channel 0": (_set("meta:layout:io_base", 10**9), "logits area"),
    "huge channel": (lambda m: m["meta"]["layout"]["channel_bytes"].__setitem__(1, 10**12), "channels hold"),
    "program missing in meta": (lambda m: m["meta"]["programs"].pop(next(iter(m["meta"]["programs"]))),
                                "programs in files and in meta.programs differ"),
    "patch of no field": (lambda m: next(iter(m["meta"]["programs"].values()))["patches"][0]
                          .__setitem__("field", "nosuch"), "has no field 'nosuch'"),
    "patch outside program": (lambda m: next(iter(m["meta"]["programs"].values()))["patches"][0]
                              .__setitem__("offset", 10**6), "outside the program"),
    "unknown top-level key": (_set("extra", 1), "Additional properties are not allowed"),
    "config edited": (_set("config:clock_mhz", 300.0), "configuration digest does not match"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_bad_manifest_is_named_even_when_re_signed(copy_of, name):
    change, message = CORRUPTIONS[name]
    _edit(copy_of, change)
    with pytest.raises(ArtifactError, match=message) as err:
        read_artifact(copy_of)
    assert "manifest.json" in str(err.value) and "recompile" in str(err.value)


def test_meta_is_covered_by_the_digest(copy_of):
    _edit(copy_of, _set("meta:model:source", "someone-else"), redigest=False)
    with pytest.raises(ArtifactError, match="does not match its sha256 .*; recompile"):
        read_artifact(copy_of)


def test_missing_file_and_manifest(copy_of, tmp_path):
    prog = next((copy_of / "programs").iterdir())
    prog.unlink()
    with pytest.raises(ArtifactError, match=f"{prog.name}: the program file listed in the manifest is missing"):
        read_artifact(copy_of)
    (copy_of / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupt manifest"):
        read_artifact(copy_of)
    (copy_of / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="manifest.json: missing, so .* is not a compiled olivine artifact"):
        read_artifact(copy_of)
    with pytest.raises(ArtifactError, match="no such compiled artifact"):
        read_artifact(tmp_path / "nowhere")


@contextmanager
def _deadline(seconds: int):
    def expired(*_):
        raise TimeoutError(f"no answer within {seconds} s (a hang)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_manifest_fifo_and_dev_zero_do_not_hang(copy_of):
    manifest = copy_of / "manifest.json"
    manifest.unlink()
    os.mkfifo(manifest)
    with _deadline(10), pytest.raises(ArtifactError, match="manifest.json: the manifest is not a regular file"):
        read_artifact(copy_of)
    manifest.unlink()
    manifest.symlink_to("/dev/zero")
    with _deadline(10), pytest.raises(ArtifactError, match="the manifest is a symbolic link"):
        read_artifact(copy_of)


def test_listed_files_must_be_regular_files_inside(copy_of, tmp_path):
    target = copy_of / "weights" / "ch03.bin"
    outside = tmp_path / "outside.bin"
    outside.write_bytes(target.read_bytes())
    target.unlink()
    target.symlink_to(outside)  # same bytes, but outside the artifact
    with pytest.raises(ArtifactError, match="ch03.bin: the weights file listed in the manifest is a symbolic link"):
        read_artifact(copy_of)
    target.unlink()
    target.mkdir()
    with pytest.raises(ArtifactError, match="ch03.bin: the weights file .* is not a regular file"):
        read_artifact(copy_of)
    shutil.rmtree(target)
    shutil.rmtree(copy_of / "programs")
    (copy_of / "programs").symlink_to(tmp_path)
    with pytest.raises(ArtifactError, match="programs: missing or not a directory"):
        read_artifact(copy_of)


def test_corrupt_weights_and_config_mismatch(copy_of):
    with pytest.raises(ArtifactError, match="compiled for hardware configuration"):
        read_artifact(copy_of, expect_config=for_board("u50"))
    ch = copy_of / "weights" / "ch05.bin"
    ch.write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="ch05.bin: corrupt"):
        read_artifact(copy_of)


def test_program_container_errors():
    data = program_bytes(np.arange(4, dtype=np.uint32))
    assert np.array_equal(parse_program(data), np.arange(4))
    with pytest.raises(ArtifactError, match="truncated"):
        parse_program(data[:-2])
    with pytest.raises(ArtifactError, match="not an olivine program"):
        parse_program(b"ELF\x00" + data[4:])
    with pytest.raises(ArtifactError, match="too short"):
        parse_program(b"OL")



def test_fast_patch_check_agrees_with_the_schema():
    from olivine.compiler import artifact as mod

    doc = mod.schema()
    full = mod._strict_validator()({"$ref": "#/$defs/patch", "$defs": doc["$defs"]})
    good = {"mnemonic": "LD", "field": "hbm_addr", "offset": 17, "base": 40960, "scale": 144, "var": "tok_row.0"}
    rng = random.Random(7)
    verdicts = set()
    for _ in range(2000):
        p = dict(good)
        for _ in range(rng.randint(0, 2)):
            key = rng.choice(list(good) + ["extra"])
            if rng.random() < 0.2:
                p.pop(key, None)
            else:
                p[key] = copy.deepcopy(rng.choice(ODD_VALUES + ["LD", "x", -5, 3]))
        if rng.random() < 0.02:
            p = rng.choice(ODD_VALUES)
        by_schema, by_code = full.is_valid(p), mod._check_patch(p) is None
        assert by_schema == by_code, p
        verdicts.add(by_code)
    assert verdicts == {True, False}


def test_patch_records_are_checked(copy_of):
    _edit(copy_of, lambda m: next(iter(m["meta"]["programs"].values()))["patches"][3].__setitem__("base", 1.5))
    with pytest.raises(ArtifactError, match=r"patches\[3\]: base: 1.5 is not of type 'integer'"):
        read_artifact(copy_of)


# ---- fuzz: seeded random corruptions ------------------------------------------------------------

ODD_VALUES = [None, [], {}, 0, -1, 1, 99, 2**40, 10**30, 1.0, 0.5, True, False, "", "bogus", "../x",
              "/etc/hostname", "weights/ch00.bin", [1, 2], {"a": 1}]


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node[:4]):
            yield from _paths(v, prefix + (i,))


def _mutate_json(manifest, rng):
    paths = [p for p in _paths(manifest) if p]
    path = rng.choice(paths)
    parent = manifest
    for key in path[:-1]:
        parent = parent[key]
    action = rng.random()
    if action < 0.2 and isinstance(parent, dict):
        del parent[path[-1]]
    elif action < 0.3 and isinstance(parent, dict):
        parent[rng.choice(["extra", "../y", "/etc/passwd"])] = rng.choice(ODD_VALUES)
    else:
        parent[path[-1]] = copy.deepcopy(rng.choice(ODD_VALUES))
    return manifest


def _corrupt(directory: Path, rng: random.Random) -> str:
    """One random corruption; returns what it did."""
    manifest = directory / "manifest.json"
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != "manifest.json")
    choice = rng.randrange(9)
    if choice <= 2:  # a field of the manifest, signed again or not
        redigest = choice == 2
        _edit(directory, lambda m: _mutate_json(m, rng), redigest=redigest)
        return f"json field (re-signed {redigest})"
    if choice == 3:  # bytes of the manifest text
        data = bytearray(manifest.read_bytes())
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        manifest.write_bytes(bytes(data))
        return "manifest bytes"
    if choice == 4:
        manifest.write_bytes(manifest.read_bytes()[: rng.randrange(manifest.stat().st_size)])
        return "manifest truncated"
    victim = rng.choice(files)
    if choice == 5:
        data = bytearray(victim.read_bytes()) or bytearray(b"\0")
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        victim.write_bytes(bytes(data))
        return f"flipped a bit of {victim.name}"
    if choice == 6:
        victim.write_bytes(victim.read_bytes()[: rng.randrange(max(victim.stat().st_size, 1))])
        return f"truncated {victim.name}"
    if choice == 7:
        victim.unlink()
        return f"removed {victim.name}"
    target = rng.choice(["/dev/zero", "/etc/hostname", str(victim.parent)])
    link = manifest if rng.random() < 0.3 else victim
    link.unlink()
    link.symlink_to(target)
    return f"symlink to {target}"


def test_fuzz_corruptions_load_identically_or_fail_cleanly(written, compiled, tmp_path):
    from olivine.sim.funcsim import Runtime

    rng = random.Random(20261201)
    cases = 40 if REDUCED else 120
    outcomes = {"identical": 0, "refused": 0}
    for case in range(cases):
        out = tmp_path / f"c{case}"
        shutil.copytree(written, out, symlinks=True)
        what = _corrupt(out, rng)
        with _deadline(20):
            try:
                back = read_artifact(out)
            except ArtifactError as exc:
                assert str(exc).strip() and "\n" not in str(exc), what
                outcomes["refused"] += 1
            else:
                # a re-signed edit the schema allows may load, and must then be usable; anything
                # unsigned must be exactly the original
                if "re-signed True" in what:
                    Runtime(back.config, back.meta, back.programs, back.weights)
                else:
                    assert _same(back, compiled), what
                outcomes["identical"] += 1
        shutil.rmtree(out)
    assert outcomes["refused"] > cases // 2  # the corruptions do bite
