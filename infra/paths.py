"""Where the repository and its built artifacts are, and how a NAME or a path names an artifact folder.

Trained models live in artifacts/models/NAME, ONNX bundles in artifacts/bundles/NAME (git-ignored, built by
`trail train` and `trail export`); `--model` and `--bundle` take a NAME or a path. No I/O here.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS_DIR = REPO_ROOT / "artifacts"
MODELS_DIR = ARTIFACTS_DIR / "models"
BUNDLES_DIR = ARTIFACTS_DIR / "bundles"


def resolve_artifact(name_or_path: str, kind_dir: Path) -> Path:
    """A NAME means `kind_dir`/NAME; anything with a '/', starting with '.', or an existing folder is a path."""
    path = Path(name_or_path)
    if path.is_dir() or "/" in name_or_path or name_or_path.startswith("."):
        return path.resolve()
    return kind_dir / name_or_path
