"""The serving bundle on disk: its layout, its manifest (sha256 of every file) and the check before loading.

A bundle is a folder, by default ``artifacts/bundles/NAME/``::

    step.onnx         the step graph (prompt pass and every decoding step; logits and present cache)
    text.onnx         the text graph (item text tokens -> the item's text vector; run once per item)
    forecast.onnx     the forecast graph ([numeric features, text vector] -> log1p forecast)
    tokenizer/        tokenizer.json and friends, copied from the model
    config.json       the TrailConfig of the model
    model_card.json   the source model's card; MODEL_CARD.md its rendering
    manifest.json     name, version, sha256, graph geometry and {file: {sha256, bytes}} of every file above

`verify_bundle` recomputes every hash and refuses a bundle with a changed, missing or unlisted graph file,
naming the file. No torch and no onnxruntime here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from infra.integrity import sha256_of

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES_DIR = REPO_ROOT / "artifacts" / "bundles"
MANIFEST = "manifest.json"
STEP_GRAPH = "step.onnx"
FORECAST_GRAPH = "forecast.onnx"
TEXT_GRAPH = "text.onnx"
TOKENIZER_SUBDIR = "tokenizer"
CONFIG_FILE = "config.json"
MANIFEST_FORMAT = "trail-onnx-bundle/2"   # /2: forecast from [features, text vector]


class BundleError(ValueError):
    """A bundle that must not be loaded (missing, incomplete, or changed since export)."""


def resolve_bundle_dir(name_or_path: str) -> Path:
    """A NAME means artifacts/bundles/NAME under the repo root; a path (has '/', starts with '.', or exists) is used."""
    path = Path(name_or_path)
    if path.is_dir() or "/" in name_or_path or name_or_path.startswith("."):
        return path.resolve()
    return BUNDLES_DIR / name_or_path


def file_hashes(folder: Path) -> dict[str, dict]:
    """{relative path: {sha256, bytes}} of every file under `folder` except the manifest, sorted by path."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel != MANIFEST:
            out[rel] = {"sha256": sha256_of(path), "bytes": path.stat().st_size}
    return out


def content_sha256(files: dict[str, dict]) -> str:
    """One sha256 for the whole bundle: over the sorted 'path sha256' lines of its files."""
    lines = "".join(f"{rel} {entry['sha256']}\n" for rel, entry in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def write_manifest(folder: Path, fields: dict) -> dict:
    """Hash every file of the bundle and write manifest.json (`fields` plus files, sha256, version)."""
    files = file_hashes(folder)
    sha = content_sha256(files)
    manifest = {"format": MANIFEST_FORMAT, **fields, "sha256": sha, "version": sha[:12], "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.exists():
        raise BundleError(f"no TRAIL bundle at {folder} ({MANIFEST} missing); build one with `trail export MODEL`")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != MANIFEST_FORMAT:
        raise BundleError(f"{path}: format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}; re-export it")
    return manifest


def verify_bundle(folder: Path) -> dict:
    """The manifest, after checking the sha256 of every listed file (and that the graphs are listed)."""
    manifest = read_manifest(folder)
    files = manifest.get("files", {})
    for required in (STEP_GRAPH, TEXT_GRAPH, FORECAST_GRAPH, CONFIG_FILE, f"{TOKENIZER_SUBDIR}/tokenizer.json"):
        if required not in files:
            raise BundleError(f"{folder / MANIFEST} lists no sha256 for {required}; refusing an unverified bundle")
    for rel, entry in files.items():
        path = folder / rel
        if not path.is_file():
            raise BundleError(f"{path} is listed in the manifest but missing; re-export the bundle")
        actual = sha256_of(path)
        if actual != entry["sha256"]:
            raise BundleError(
                f"{path}: sha256 {actual} does not match the manifest ({entry['sha256']}); the file was changed "
                "or corrupted since export — refusing to load it; re-export with `trail export`"
            )
    if content_sha256(files) != manifest.get("sha256"):
        raise BundleError(f"{folder / MANIFEST}: its sha256 does not match its file list; re-export the bundle")
    return manifest
