"""Compiled artifacts on disk: programs, per-channel weight images and a manifest.

A compiled directory holds::

    manifest.json            schema version, hardware configuration and its digest, model facts,
                             every file with its size and sha256
    programs/<name>.olvp     one instruction stream per length bucket (header + uint32 words)
    weights/ch<NN>.bin       the weight image of each HBM channel, read by that channel alone

The directory is written atomically: everything goes to a temporary sibling that replaces the
target only when complete, so an interrupted compile never leaves a half-written artifact.
Loading checks the schema version, every file's size and hash, and (if given) that the hardware
configuration matches the one the artifact was compiled for; each failure names the file and what
to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from olivine.hw.config import AcceleratorConfig

SCHEMA_VERSION = 1
PROGRAM_MAGIC = b"OLVP"
PROGRAM_HEADER = struct.Struct("<4sII")  # magic, format version, number of words


class ArtifactError(ValueError):
    """A compiled artifact that is missing, corrupt or compiled for other hardware."""


def program_bytes(words: np.ndarray) -> bytes:
    words = np.asarray(words, dtype="<u4")
    return PROGRAM_HEADER.pack(PROGRAM_MAGIC, SCHEMA_VERSION, len(words)) + words.tobytes()


def parse_program(data: bytes, name: str = "program") -> np.ndarray:
    if len(data) < PROGRAM_HEADER.size:
        raise ArtifactError(f"{name}: {len(data)} bytes is too short for a program header")
    magic, version, count = PROGRAM_HEADER.unpack_from(data)
    if magic != PROGRAM_MAGIC:
        raise ArtifactError(f"{name}: not an olivine program (magic {magic!r}, expected {PROGRAM_MAGIC!r})")
    if version != SCHEMA_VERSION:
        raise ArtifactError(f"{name}: program format version {version}, this olivine reads {SCHEMA_VERSION}; recompile")
    body = data[PROGRAM_HEADER.size:]
    if len(body) != 4 * count:
        raise ArtifactError(f"{name}: header says {count} words but {len(body)} bytes follow (truncated?)")
    return np.frombuffer(body, dtype="<u4").astype(np.uint32)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Artifact:
    """An artifact in memory: what :func:`write_artifact` writes and :func:`read_artifact` returns."""

    config: AcceleratorConfig
    programs: dict[str, np.ndarray]
    weights: dict[int, bytes]
    meta: dict = field(default_factory=dict)  # model facts, buckets, quantization, statistics


def write_artifact(directory: str | Path, artifact: Artifact) -> Path:
    """Write ``artifact`` to ``directory`` atomically (replacing an existing one)."""
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        files = {}
        (tmp / "programs").mkdir()
        (tmp / "weights").mkdir()
        for name, words in sorted(artifact.programs.items()):
            rel = f"programs/{name}.olvp"
            data = program_bytes(words)
            (tmp / rel).write_bytes(data)
            files[rel] = {"bytes": len(data), "sha256": _sha256(data), "kind": "program", "name": name,
                          "words": int(len(words))}
        for channel, data in sorted(artifact.weights.items()):
            rel = f"weights/ch{channel:02d}.bin"
            (tmp / rel).write_bytes(data)
            files[rel] = {"bytes": len(data), "sha256": _sha256(data), "kind": "weights", "channel": channel}
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "config": artifact.config.to_dict(),
            "config_digest": artifact.config.digest(),
            "files": files,
            "meta": artifact.meta,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def read_manifest(directory: str | Path) -> dict:
    path = Path(directory) / "manifest.json"
    if not Path(directory).is_dir():
        raise ArtifactError(f"{directory}: no such compiled artifact directory (run `olivine compile ... -o {directory}`)")
    if not path.exists():
        raise ArtifactError(f"{directory}: manifest.json is missing: not a compiled olivine artifact")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: corrupt manifest ({exc}); recompile") from None
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ArtifactError(f"{path}: schema version {version!r}, this olivine reads {SCHEMA_VERSION}; recompile")
    return manifest


def read_artifact(directory: str | Path, expect_config: AcceleratorConfig | None = None) -> Artifact:
    """Load and verify an artifact; raise :class:`ArtifactError` naming whatever is wrong."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    try:
        config = AcceleratorConfig.from_dict(manifest["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{directory}/manifest.json: bad hardware configuration: {exc}") from None
    if config.digest() != manifest.get("config_digest"):
        raise ArtifactError(f"{directory}/manifest.json: configuration digest does not match its configuration "
                            "(edited by hand?); recompile")
    if expect_config is not None and expect_config.digest() != config.digest():
        raise ArtifactError(f"{directory} was compiled for hardware configuration {config.digest()} "
                            f"({config.board}), not {expect_config.digest()} ({expect_config.board}); recompile "
                            "for this configuration")
    programs, weights = {}, {}
    for rel, info in manifest.get("files", {}).items():
        path = directory / rel
        if not path.exists():
            raise ArtifactError(f"{path}: listed in the manifest but missing; recompile")
        data = path.read_bytes()
        if len(data) != info["bytes"] or _sha256(data) != info["sha256"]:
            raise ArtifactError(f"{path}: corrupt (size or sha256 differs from the manifest); recompile")
        if info["kind"] == "program":
            programs[info["name"]] = parse_program(data, str(path))
        else:
            weights[int(info["channel"])] = data
    return Artifact(config, programs, weights, manifest.get("meta", {}))
