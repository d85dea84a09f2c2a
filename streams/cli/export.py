"""`trail export`: a trained TRAIL model -> an ONNX bundle with a sha256 manifest (artifacts/bundles/NAME).

It prints the manifest sha256 (sha256 of manifest.json's bytes), the value an operator pins with
`trail worker --scorer-sha256` once they approve the bundle (see `export.bundle`).

Only argument parsing and progress output here; the work is `export.onnx_export.export_bundle`. torch and
onnxruntime are imported inside `run` so `trail --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="export a trained TRAIL model to a verified ONNX bundle (step + text + forecast graphs)",
        description="Export MODEL (a NAME under artifacts/models or a folder) to ONNX: a step graph with a "
        "key/value cache (prompt pass and decoding), a text graph (item text -> text vector, run once per item) "
        "and a forecast graph ([features, text vector] -> forecast), plus tokenizer, config, model card "
        "and manifest.json with the sha256 of every file. Default output: artifacts/bundles/NAME[-int8]. "
        "Prints the manifest sha256 to pin with `trail worker --scorer-sha256`.",
    )
    p.add_argument("model", metavar="MODEL", help="trained model: NAME under artifacts/models, or a folder")
    p.add_argument("--out", type=Path, default=None, help="bundle folder (default artifacts/bundles/NAME[-int8])")
    p.add_argument("--int8", action="store_true", help="dynamic int8 quantisation of the MatMul weights")
    p.add_argument("--catalogue", metavar="ml-100k|FILE", default=None,
                   help="also store the text vectors of this catalogue (ml-100k, or a JSONL/Parquet items file with "
                   "item_id and text or title) in the bundle: a worker serving it reads none of those texts at its "
                   "first step")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON at the end")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from export.bundle import BUNDLES_DIR, manifest_sha256
    from export.catalogue_vectors import catalogue_texts
    from export.onnx_export import export_bundle

    console = Console(stderr=True)
    catalogue = catalogue_texts(args.catalogue) if args.catalogue else None   # a bad file fails before the export
    with console.status("export") as status:
        manifest = export_bundle(args.model, args.out.resolve() if args.out else None, int8=args.int8,
                                 on_stage=lambda name: status.update(f"export: {name}"), catalogue=catalogue)
    folder = args.out.resolve() if args.out else None
    pin = manifest_sha256(folder or BUNDLES_DIR / manifest["name"])   # export_bundle's default folder
    sizes = ", ".join(f"{f} {manifest['files'][f]['bytes'] / 1e6:.1f} MB"
                      for f in (manifest["graph"]["step"], manifest["graph"]["text"], manifest["graph"]["forecast"]))
    console.print(f"exported {manifest['model']['name']} ({manifest['precision']}) to bundle {manifest['name']}"
                  f"{f' at {folder}' if folder else ''} in {manifest['export_s']} s: {sizes}; "
                  f"sha256 {manifest['sha256'][:12]}")
    if catalogue:
        console.print(f"text vectors of {len(catalogue)} catalogue texts ({args.catalogue}) in "
                      f"{manifest['graph']['text_vectors']}")
    console.print(f"manifest sha256 {pin}\n  approve this bundle by pinning it: trail worker --scorer-sha256 {pin} "
                  "(or TRAIL_SCORER_SHA256)", soft_wrap=True, highlight=False)
    if args.json:
        print(json.dumps({**manifest, "manifest_sha256": pin}, indent=2))
    return 0
