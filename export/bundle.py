"""The serving bundle on disk: its layout, its manifest (sha256 of every file), and loading it verified.

A bundle is a flat folder, by default ``artifacts/bundles/NAME/``::

    step.onnx         the step graph (prompt pass and every decoding step; logits and present cache)
    text.onnx         the text graph (item text tokens -> the item's text vector; run once per item)
    forecast.onnx     the forecast graph ([numeric features, text vector] -> log1p forecast)
    tokenizer.json    the model's tokenizer (the `tokenizers` library reads it)
    config.json       the TrailConfig of the model
    model_card.json   the source model's card; MODEL_CARD.md its rendering
    text_vectors.npz  optional (`trail export --catalogue`): a known catalogue's text vectors
                      (`export.catalogue_vectors`), named by ``graph["text_vectors"]``
    manifest.json     name, version, sha256, graph geometry, the file the runtime opens for each of
                      step/text/forecast/tokenizer (``graph``), and {file: {sha256, bytes}} of every file above

Two hashes, two jobs:
- ``manifest["sha256"]``: over the sorted "name sha256" lines of the files; trend records carry it as the
  model's provenance.
- the **manifest sha256**: sha256 of the bytes of manifest.json as they are on disk. The manifest lists every
  file's sha256 and every setting the runtime reads, so this one hash pins the whole bundle; `trail export`
  prints it and `trail worker --scorer-sha256 HEX` (or $TRAIL_SCORER_SHA256) refuses any other bundle.

`verify_bundle` reads the manifest once, checks the pin, checks that every file name is a plain name inside
the folder and that every file the runtime opens is listed, then reads each listed file once, checks its
size and sha256, and returns the verified bytes (`VerifiedBundle`). The runtime builds its sessions and
tokenizer from those bytes, never from the paths, so a file changed after the check is never loaded.
Refusals are `BundleError`s naming the file and what to do. No torch and no onnxruntime here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from infra.errors import TrailError
from infra.integrity import sha256_of
from infra.paths import BUNDLES_DIR, resolve_artifact

MANIFEST = "manifest.json"
STEP_GRAPH = "step.onnx"
FORECAST_GRAPH = "forecast.onnx"
TEXT_GRAPH = "text.onnx"
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "config.json"
# /3: flat folder, plain file names only, the tokenizer named in "graph"; /2: forecast from [features, text vector]
MANIFEST_FORMAT = "trail-onnx-bundle/3"
RUNTIME_FILES = ("step", "text", "forecast", "tokenizer")   # manifest["graph"][key]: a file the runtime opens
OPTIONAL_RUNTIME_FILES = ("text_vectors",)                    # ... when the manifest names one
PIN_ENV = "TRAIL_SCORER_SHA256"
MAX_MANIFEST_BYTES = 1 << 20
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class BundleError(TrailError, ValueError):
    """A bundle that must not be loaded (missing, incomplete, or changed since export)."""


class BundleNameError(BundleError):
    """The manifest names a file that is not a plain file name inside the bundle folder, or is not listed."""


class BundlePinError(BundleError):
    """The bundle is valid but is not the one the operator pinned with --scorer-sha256."""


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose files were read once and checked: load from `contents`, never from `folder` again."""

    folder: Path
    manifest: dict
    manifest_sha256: str             # sha256 of manifest.json's bytes: what --scorer-sha256 pins
    contents: dict[str, bytes]       # file name -> verified bytes, for every file the runtime opens

    def runtime_bytes(self, key: str) -> bytes:
        """The verified bytes of the runtime file `key` (one of RUNTIME_FILES)."""
        return self.contents[self.manifest["graph"][key]]


def resolve_bundle_dir(name_or_path: str) -> Path:
    """A NAME means artifacts/bundles/NAME; a path is a folder (`infra.paths.resolve_artifact`)."""
    return resolve_artifact(name_or_path, BUNDLES_DIR)


def parse_sha256(text: str) -> str:
    """A pinned bundle hash as 64 lowercase hex digits; ValueError saying what was given otherwise."""
    value = text.strip().lower()
    if not _SHA256_HEX.fullmatch(value):
        raise ValueError(f"a bundle pin is the 64-hex-digit manifest sha256 that `trail export` prints, got {text!r}")
    return value


def check_file_name(name: object, manifest_path: Path) -> str:
    """`name` if it is a plain file name inside the bundle (no folder separators, no '..', not absolute)."""
    plain = (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
             and "\0" not in name and not os.path.isabs(name))
    if not plain:
        raise BundleNameError(f"{manifest_path} names the file {name!r}: bundle files must be plain file names "
                              "inside the bundle folder (no '/', no '..', not absolute); refusing the bundle — "
                              "re-export it with `trail export`")
    return name


def file_hashes(folder: Path) -> dict[str, dict]:
    """{file name: {sha256, bytes}} of every file directly in `folder` except the manifest, sorted by name."""
    out = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name != MANIFEST):
        out[path.name] = {"sha256": sha256_of(path), "bytes": path.stat().st_size}
    return out


def content_sha256(files: dict[str, dict]) -> str:
    """One sha256 for the whole bundle: over the sorted 'name sha256' lines of its files."""
    lines = "".join(f"{rel} {entry['sha256']}\n" for rel, entry in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def write_manifest(folder: Path, fields: dict) -> dict:
    """Hash every file of the bundle and write manifest.json (`fields` plus files, sha256, version)."""
    files = file_hashes(folder)
    sha = content_sha256(files)
    manifest = {"format": MANIFEST_FORMAT, **fields, "sha256": sha, "version": sha[:12], "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def manifest_sha256(folder: Path) -> str:
    """sha256 of the bundle's manifest.json bytes: the value to pin with --scorer-sha256."""
    return sha256_of(folder / MANIFEST)


def read_once(path: Path, max_bytes: int) -> bytes:
    """The bytes of the regular file `path` (not a symlink, at most `max_bytes`), from one open."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise BundleError(f"{path} is missing; re-export the bundle with `trail export`") from None
    except OSError as exc:   # ELOOP: a symlink
        raise BundleError(f"{path} cannot be opened as a plain file ({exc.strerror}); bundle files must be "
                          "regular files, not symlinks — copy the real file in") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise BundleError(f"{path} is not a regular file; refusing the bundle")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise BundleError(f"{path} is larger than the {max_bytes} bytes the manifest allows; refusing the bundle")
    return data


def parse_manifest(data: bytes, path: Path) -> dict:
    """The manifest's JSON, with its format checked."""
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise BundleError(f"{path} is not valid JSON ({exc}); re-export the bundle with `trail export`") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise BundleError(f"{path}: format {found!r}, expected {MANIFEST_FORMAT!r}; re-export it with `trail export`")
    return manifest


def read_manifest(folder: Path) -> tuple[dict, str]:
    """(manifest, sha256 of its bytes), read once; BundleError if there is none or it is not a TRAIL manifest."""
    path = folder / MANIFEST
    if not path.exists():
        raise BundleError(f"no TRAIL bundle at {folder} ({MANIFEST} missing); build one with `trail export MODEL`")
    data = read_once(path, MAX_MANIFEST_BYTES)
    return parse_manifest(data, path), hashlib.sha256(data).hexdigest()


def check_pin(folder: Path, actual: str, expected: str | None) -> None:
    """BundlePinError unless the manifest sha256 is the pinned one (no pin: anything passes)."""
    if expected is not None and actual != expected:
        raise BundlePinError(
            f"{folder / MANIFEST} has sha256 {actual}, not the pinned {expected} (--scorer-sha256 / ${PIN_ENV}): "
            "this is not the bundle that was approved, refusing it; if the new bundle is approved, pin the "
            "manifest sha256 that `trail export` printed for it")


def listed_files(manifest: dict, manifest_path: Path) -> dict[str, dict]:
    """The manifest's {name: {sha256, bytes}}, every name checked to be a plain file name."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{manifest_path} lists no files; re-export the bundle with `trail export`")
    for name, entry in files.items():
        check_file_name(name, manifest_path)
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                and isinstance(entry.get("bytes"), int) and entry["bytes"] >= 0):
            raise BundleError(f"{manifest_path}: the entry of {name!r} needs a sha256 and a byte count; re-export it")
    return files


def runtime_file_names(manifest: dict, files: dict[str, dict], manifest_path: Path) -> set[str]:
    """The names the runtime opens (manifest["graph"][step|text|forecast|tokenizer], and text_vectors when
    named), each plain and listed."""
    graph = manifest.get("graph") or {}
    names = set()
    for key in (*RUNTIME_FILES, *(k for k in OPTIONAL_RUNTIME_FILES if k in graph)):
        name = check_file_name(graph.get(key), manifest_path)
        if name not in files:
            raise BundleNameError(f"{manifest_path}: the {key} file {name!r} is not listed with a sha256 in "
                                  "'files'; refusing an unverified file — re-export the bundle")
        names.add(name)
    return names


def read_verified(folder: Path, name: str, entry: dict) -> bytes:
    """The bytes of bundle file `name`, read once, after checking them against the manifest entry."""
    data = read_once(folder / name, entry["bytes"])
    actual = hashlib.sha256(data).hexdigest()
    if len(data) != entry["bytes"] or actual != entry["sha256"]:
        raise BundleError(
            f"{folder / name}: sha256 {actual} ({len(data)} bytes) does not match the manifest ({entry['sha256']}, "
            f"{entry['bytes']} bytes); the file was changed or corrupted since export — refusing to load it; "
            "re-export with `trail export`")
    return data


def verify_bundle(folder: Path, expected_sha256: str | None = None) -> VerifiedBundle:
    """Read and check the bundle once (pin, names, listing, every file's size and sha256); see the module doc."""
    manifest, pin = read_manifest(folder)
    check_pin(folder, pin, expected_sha256)
    manifest_path = folder / MANIFEST
    files = listed_files(manifest, manifest_path)
    needed = runtime_file_names(manifest, files, manifest_path)
    if content_sha256(files) != manifest.get("sha256"):
        raise BundleError(f"{manifest_path}: its sha256 does not match its file list; re-export the bundle")
    contents = {}
    for name, entry in files.items():
        data = read_verified(folder, name, entry)
        if name in needed:
            contents[name] = data
    return VerifiedBundle(folder=folder, manifest=manifest, manifest_sha256=pin, contents=contents)
