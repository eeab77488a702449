"""Compiled artifacts on disk: programs, per-channel weight images and a manifest.

A compiled directory holds::

    manifest.json            schema version, hardware configuration and its digest, model facts and
                             run-time tables (``meta``), every file with its size and sha256, and the
                             sha256 of all of that (``manifest_sha256``)
    programs/<name>.olvp     one instruction stream per length bucket (header + uint32 words)
    weights/ch<NN>.bin       the weight image of each HBM channel, read by that channel alone
    olivine-output.json      the marker that lets a later compile replace this directory

Writing goes through :func:`olivine.outputs.output_directory`: atomic (a temporary sibling that
replaces the target only when complete), and it only ever replaces an earlier artifact, never a
directory or file olivine did not write.

Loading trusts nothing: ``manifest.json`` must be a regular file of bounded size; it is checked
against ``artifact.schema.json`` (JSON Schema, with integers that are JSON integers: ``1.0`` and
``true`` are not), then by the cross-field rules of :func:`_check_manifest` (every channel of the
layout present once, program files and run-time tables agree, sizes within the hardware's
channels, patches naming real instruction fields), then by its own digest; every listed file must
be a regular file inside the artifact with the recorded size and sha256. Every failure is an
:class:`ArtifactError` naming the file and what to do.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import numpy as np

from olivine.hw.config import AcceleratorConfig
from olivine.outputs import check_output_directory, output_directory

from . import isa

SCHEMA_VERSION = 2  # 2: manifest_sha256 covers the whole manifest (meta included); strict schema
PROGRAM_FORMAT_VERSION = 1  # the .olvp container (unchanged since schema 1)
PROGRAM_MAGIC = b"OLVP"
PROGRAM_HEADER = struct.Struct("<4sII")  # magic, format version, number of words
OUTPUT_KIND = "artifact"
#: Upper bound on manifest.json (its patch tables grow with the buckets: about 60 MB for SmolLM2 with
#: every bucket up to 8,192 tokens). A bound, so a link to /dev/zero cannot exhaust memory.
MANIFEST_MAX_BYTES = 256 << 20
SCHEMA_PATH = Path(__file__).with_name("artifact.schema.json")


class ArtifactError(ValueError):
    """A compiled artifact that is missing, corrupt or compiled for other hardware."""


def program_bytes(words: np.ndarray) -> bytes:
    words = np.asarray(words, dtype="<u4")
    return PROGRAM_HEADER.pack(PROGRAM_MAGIC, PROGRAM_FORMAT_VERSION, len(words)) + words.tobytes()


def parse_program(data: bytes, name: str = "program") -> np.ndarray:
    if len(data) < PROGRAM_HEADER.size:
        raise ArtifactError(f"{name}: {len(data)} bytes is too short for a program header; recompile")
    magic, version, count = PROGRAM_HEADER.unpack_from(data)
    if magic != PROGRAM_MAGIC:
        raise ArtifactError(f"{name}: not an olivine program (magic {magic!r}, expected {PROGRAM_MAGIC!r}); "
                            "recompile")
    if version != PROGRAM_FORMAT_VERSION:
        raise ArtifactError(f"{name}: program format version {version}, this olivine reads "
                            f"{PROGRAM_FORMAT_VERSION}; recompile")
    body = data[PROGRAM_HEADER.size:]
    if len(body) != 4 * count:
        raise ArtifactError(f"{name}: header says {count} words but {len(body)} bytes follow (truncated?); "
                            "recompile")
    return np.frombuffer(body, dtype="<u4").astype(np.uint32)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def manifest_digest(manifest: dict) -> str:
    """sha256 of every key of the manifest but ``manifest_sha256`` itself, in canonical JSON."""
    return _sha256(_canonical({k: v for k, v in manifest.items() if k != "manifest_sha256"}))


@dataclass
class Artifact:
    """An artifact in memory: what :func:`write_artifact` writes and :func:`read_artifact` returns."""

    config: AcceleratorConfig
    programs: dict[str, np.ndarray]
    weights: dict[int, bytes]
    meta: dict = field(default_factory=dict)  # model facts, buckets, quantization, statistics


def weights_path(channel: int) -> str:
    return f"weights/ch{channel:02d}.bin"


def program_path(name: str) -> str:
    return f"programs/{name}.olvp"


def _manifest_for(artifact: Artifact) -> tuple[dict, dict[str, bytes]]:
    files, contents = {}, {}
    for name, words in sorted(artifact.programs.items()):
        rel, data = program_path(name), program_bytes(words)
        contents[rel] = data
        files[rel] = {"bytes": len(data), "sha256": _sha256(data), "kind": "program", "name": name,
                      "words": int(len(words))}
    for channel, data in sorted(artifact.weights.items()):
        rel = weights_path(channel)
        contents[rel] = bytes(data)
        files[rel] = {"bytes": len(data), "sha256": _sha256(data), "kind": "weights", "channel": int(channel)}
    manifest = {"schema_version": SCHEMA_VERSION, "config": artifact.config.to_dict(),
                "config_digest": artifact.config.digest(), "files": files,
                # through JSON once, so the digest is of exactly what a reader will parse
                "meta": json.loads(_canonical(artifact.meta))}
    manifest["manifest_sha256"] = manifest_digest(manifest)
    return manifest, contents


def _is_legacy_artifact(directory: Path) -> bool:
    """An artifact written before output markers existed (schema 1): replaceable by a new compile."""
    manifest = directory / "manifest.json"
    try:
        st = manifest.lstat()
        if not stat.S_ISREG(st.st_mode) or st.st_size > MANIFEST_MAX_BYTES:
            return False
        data = json.loads(manifest.read_bytes())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and {"schema_version", "config_digest", "files"} <= set(data)


def check_destination(directory: str | Path) -> Path:
    """Refuse (OutputError) an ``-o`` that an artifact may not be written to, before any work is done."""
    return check_output_directory(directory, OUTPUT_KIND, recognise=_is_legacy_artifact)


def write_artifact(directory: str | Path, artifact: Artifact) -> Path:
    """Write ``artifact`` to ``directory`` atomically; it may only replace an earlier artifact.

    Raises :class:`olivine.outputs.OutputError` (before writing anything) when ``directory`` is a
    file, a non-empty directory that is not an artifact, or otherwise unusable, and
    :class:`ArtifactError` when the artifact itself would not load back.
    """
    manifest, contents = _manifest_for(artifact)
    problems = _check_manifest(manifest, "manifest.json (being written)")
    if problems:
        raise ArtifactError(f"refusing to write an artifact that would not load: {problems[0]}")
    with output_directory(directory, OUTPUT_KIND, recognise=_is_legacy_artifact) as tmp:
        (tmp / "programs").mkdir()
        (tmp / "weights").mkdir()
        for rel, data in contents.items():
            (tmp / rel).write_bytes(data)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return Path(directory)


# ---- reading --------------------------------------------------------------------------------------

def _strict_validator() -> type:
    # Python's json gives 1.0 for "1.0" and True for "true"; JSON Schema's "integer" would accept 1.0
    # (and jsonschema already refuses bools): integers here are exactly Python ints.
    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine("integer", lambda _checker, value: type(value) is int)
    return jsonschema.validators.extend(base, type_checker=checker)


def schema() -> dict:
    """The manifest's JSON Schema (compiler/artifact.schema.json)."""
    return json.loads(SCHEMA_PATH.read_text())


@functools.cache
def _validator(full: bool = False):
    """The schema validator; by default without the per-patch items, which :func:`_check_patch` checks
    about 100 times faster (jsonschema takes ~100 us per patch, a minute for a long-context SmolLM2)."""
    doc = schema()
    _strict_validator().check_schema(doc)
    if not full:
        doc["$defs"]["meta"]["properties"]["programs"]["additionalProperties"]["properties"]["patches"].pop("items")
    return _strict_validator()(doc)


_PATCH_KEYS = frozenset(("mnemonic", "field", "offset", "base", "scale", "var"))


def _check_patch(p) -> str | None:
    """What is wrong with one patch record by the schema's ``$defs/patch``, or None (same answers, fast)."""
    if type(p) is not dict:
        return f"{json.dumps(p)[:40]} is not of type 'object'"
    if p.keys() != _PATCH_KEYS:
        missing, extra = sorted(_PATCH_KEYS - p.keys()), sorted(p.keys() - _PATCH_KEYS)
        return f"missing {missing}" if missing else f"unexpected {extra}"
    for key in ("mnemonic", "field", "var"):
        if type(p[key]) is not str:
            return f"{key}: {json.dumps(p[key])[:40]} is not of type 'string'"
    for key in ("offset", "base", "scale"):
        if type(p[key]) is not int:
            return f"{key}: {json.dumps(p[key])[:40]} is not of type 'integer'"
    if p["offset"] < 0:
        return f"offset: {p['offset']} is less than the minimum of 0"
    if not p["var"]:
        return "var: '' is too short"
    return None


def _where(error: jsonschema.ValidationError) -> str:
    return error.json_path if error.json_path != "$" else "the top level"


def _check_manifest(manifest, name: str) -> list[str]:
    """Everything wrong with a parsed manifest (empty when it is sound), most basic problem first."""
    # the most telling problem first: a file name that leaves the artifact, then the deepest problem;
    # "unexpected property" only when nothing else is wrong
    def rank(e):
        return 0 if "propertyNames" in e.absolute_schema_path else 2 if e.validator == "unevaluatedProperties" else 1

    errors = sorted(_validator().iter_errors(manifest), key=lambda e: (rank(e), -len(e.absolute_path), e.json_path))
    if errors:
        return [f"{name}: {_where(e)}: {e.message}" for e in errors]
    if manifest["schema_version"] != SCHEMA_VERSION:
        return [f"{name}: schema version {manifest['schema_version']}, this olivine reads {SCHEMA_VERSION}"]
    meta, files, problems = manifest["meta"], manifest["files"], []
    try:
        config = AcceleratorConfig.from_dict(manifest["config"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return [f"{name}: bad hardware configuration: {exc}"]
    if config.digest() != manifest["config_digest"]:
        return [f"{name}: the configuration digest does not match the configuration (edited by hand?)"]
    lay = meta["layout"]
    channels = lay["channels"]
    if channels != config.hbm_channels:
        problems.append(f"{name}: meta.layout.channels = {channels}, but the configuration has "
                        f"{config.hbm_channels} HBM channels")
    for key in ("channel_bytes", "weight_bytes"):
        if len(lay[key]) != channels:
            problems.append(f"{name}: meta.layout.{key} lists {len(lay[key])} channels, not {channels}")
    cap = config.board_facts.memory.channel_bytes
    if cap and max(lay["channel_bytes"]) > cap:
        problems.append(f"{name}: meta.layout.channel_bytes needs {max(lay['channel_bytes'])} bytes in a channel; "
                        f"{config.board} channels hold {cap}")
    vocab = meta["model"]["config"]["vocab_size"]
    if lay["channel_bytes"] and lay["io_base"] + 4 * vocab > lay["channel_bytes"][0]:
        problems.append(f"{name}: the logits area (meta.layout.io_base {lay['io_base']} + {4 * vocab} bytes) "
                        f"lies outside channel 0 ({lay['channel_bytes'][0]} bytes)")
    rows = meta["prefill_rows"]
    if rows & (rows - 1):
        problems.append(f"{name}: meta.prefill_rows = {rows} is not a power of two")
    # weights: one file per channel of the layout, each inside its channel
    seen: dict[int, str] = {}
    for rel, info in files.items():
        if info["kind"] != "weights":
            continue
        ch = info["channel"]
        if ch >= channels:
            problems.append(f"{name}: {rel} is for channel {ch}, but the layout has channels 0..{channels - 1}")
        elif rel != weights_path(ch) or ch in seen:
            problems.append(f"{name}: {rel} is recorded as channel {ch} (expected {weights_path(ch)}, once)")
        else:
            seen[ch] = rel
            if len(lay["channel_bytes"]) == channels and info["bytes"] > lay["channel_bytes"][ch]:
                problems.append(f"{name}: {rel} holds {info['bytes']} bytes, more than channel {ch}'s "
                                f"{lay['channel_bytes'][ch]}")
    missing = sorted(set(range(channels)) - set(seen))
    if missing and channels <= len(lay["channel_bytes"]):
        problems.append(f"{name}: no weight image for channel(s) {', '.join(map(str, missing[:8]))}"
                        f"{' ...' if len(missing) > 8 else ''} (every channel of the layout needs its file)")
    # programs: the files and the run-time tables name the same programs
    programs = {info["name"]: (rel, info) for rel, info in files.items() if info["kind"] == "program"}
    for pname, (rel, info) in programs.items():
        if rel != program_path(pname):
            problems.append(f"{name}: {rel} is recorded as program {pname!r} (expected {program_path(pname)})")
        if info["bytes"] != PROGRAM_HEADER.size + 4 * info["words"]:
            problems.append(f"{name}: {rel}: {info['words']} words do not make {info['bytes']} bytes")
    tables = meta["programs"]
    if set(programs) != set(tables):
        only_files = sorted(set(programs) - set(tables))
        only_tables = sorted(set(tables) - set(programs))
        problems.append(f"{name}: programs in files and in meta.programs differ (files only: {only_files[:4]}, "
                        f"meta only: {only_tables[:4]})")
    for pname, prog in tables.items():
        if prog["kind"] == "prefill" and prog["bucket"] % rows:
            problems.append(f"{name}: meta.programs.{pname}: prefill bucket {prog['bucket']} is not a multiple "
                            f"of prefill_rows {rows}")
        words = programs.get(pname, (None, {"words": 0}))[1]["words"]
        for k, p in enumerate(prog["patches"]):
            where = f"{name}: $.meta.programs.{pname}.patches[{k}]"
            wrong = _check_patch(p)
            if wrong is not None:
                problems.append(f"{where}: {wrong}")
                break
            fmt = isa.BY_MNEMONIC.get(p["mnemonic"])
            if fmt is None:
                problems.append(f"{where}: unknown mnemonic {p['mnemonic']!r}")
            elif p["field"] not in {f.name for f in fmt.all_fields}:
                problems.append(f"{where}: {p['mnemonic']} has no field {p['field']!r}")
            elif p["offset"] + fmt.words > words:
                problems.append(f"{where}: offset {p['offset']} lies outside the program's {words} words")
    return problems


def _open_regular(path: Path, limit: int, what: str) -> bytes:
    """The bytes of ``path`` if it is a regular file (not a link, FIFO or device) of at most ``limit`` bytes."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise ArtifactError(f"{path}: {what} is missing; recompile") from None
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read {what} ({exc.strerror}); recompile") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise ArtifactError(f"{path}: {what} is {kind}; recompile into a fresh directory")
    if st.st_size > limit:
        raise ArtifactError(f"{path}: {what} is {st.st_size} bytes, more than the {limit} expected; recompile")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read {what} ({exc.strerror}); recompile") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):  # swapped since the lstat
            raise ArtifactError(f"{path}: {what} is not a regular file; recompile")
        return handle.read(limit + 1)


def read_manifest(directory: str | Path) -> dict:
    """The parsed, schema-checked and digest-checked manifest of an artifact directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: no such compiled artifact directory; "
                            f"run `olivine compile ... -o {directory}` first")
    path = directory / "manifest.json"
    if not os.path.lexists(path):
        raise ArtifactError(f"{path}: missing, so {directory} is not a compiled olivine artifact; "
                            f"run `olivine compile ... -o {directory}`")
    raw = _open_regular(path, MANIFEST_MAX_BYTES, "the manifest")

    def no_constants(name):
        raise ValueError(f"{name} is not a JSON number")

    try:
        manifest = json.loads(raw, parse_constant=no_constants)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, undecodable bytes, NaN, deep nesting
        raise ArtifactError(f"{path}: corrupt manifest ({str(exc)[:200]}); recompile") from None
    if isinstance(manifest, dict) and "schema_version" in manifest and manifest["schema_version"] != SCHEMA_VERSION:
        raise ArtifactError(f"{path}: schema version {manifest['schema_version']!r}, this olivine reads "
                            f"{SCHEMA_VERSION}; recompile (the artifact is stale or damaged)")
    problems = _check_manifest(manifest, str(path))
    if problems:
        raise ArtifactError(f"{problems[0]}; recompile" + (f" ({len(problems) - 1} more problems)"
                                                            if len(problems) > 1 else ""))
    if manifest_digest(manifest) != manifest["manifest_sha256"]:
        raise ArtifactError(f"{path}: the manifest does not match its sha256 (edited or damaged); recompile")
    return manifest


def read_artifact(directory: str | Path, expect_config: AcceleratorConfig | None = None) -> Artifact:
    """Load and verify an artifact; raise :class:`ArtifactError` naming whatever is wrong."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    config = AcceleratorConfig.from_dict(manifest["config"])
    if expect_config is not None and expect_config.digest() != config.digest():
        raise ArtifactError(f"{directory} was compiled for hardware configuration {config.digest()} "
                            f"({config.board}), not {expect_config.digest()} ({expect_config.board}); recompile "
                            "for this configuration")
    for sub in ("programs", "weights"):
        st = os.lstat(directory / sub) if os.path.lexists(directory / sub) else None
        if st is None or not stat.S_ISDIR(st.st_mode):
            raise ArtifactError(f"{directory / sub}: missing or not a directory (a link?); recompile")
    programs, weights = {}, {}
    for rel, info in manifest["files"].items():
        path = directory / rel  # rel is programs/<name>.olvp or weights/chNN.bin (schema): inside the artifact
        data = _open_regular(path, info["bytes"], f"the {info['kind']} file listed in the manifest")
        if len(data) != info["bytes"] or _sha256(data) != info["sha256"]:
            raise ArtifactError(f"{path}: corrupt (size or sha256 differs from the manifest); recompile")
        if info["kind"] == "program":
            programs[info["name"]] = parse_program(data, str(path))
        else:
            weights[info["channel"]] = data
    return Artifact(config, programs, weights, manifest["meta"])
