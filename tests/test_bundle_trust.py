"""A bundle is loaded only as verified: plain listed file names, bytes checked once and loaded from memory,
and, when an operator pins a manifest sha256, no other bundle at start or on hot reload."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from export.bench_score import synthetic_batch
from export.bundle import (
    MANIFEST,
    BundleError,
    BundleNameError,
    BundlePinError,
    manifest_sha256,
    verify_bundle,
)
from export.onnx_scorer import load_bundle_scorer, scorer_from_verified
from streams.scorer_runtime import ScorerRuntime


def copy_bundle(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    return dest


def edit_manifest(folder: Path, edit) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    edit(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def relabelled_copy(source: Path, dest: Path, name: str) -> Path:
    """Another valid bundle: the same verified files under a manifest with another name (other manifest bytes)."""
    copy_bundle(source, dest)
    edit_manifest(dest, lambda m: m.update(name=name))
    return dest


def touch_later(path: Path) -> None:
    """Move the file's mtime forward, so a reload check sees a change even within one clock tick."""
    later = path.stat().st_mtime + 10
    os.utime(path, (later, later))


async def settle_reload(runtime: ScorerRuntime, timeout_s: float = 60) -> None:
    """Let the runtime notice the changed manifest and finish loading (or refusing) it in its thread."""
    await runtime.maybe_reload()
    deadline = asyncio.get_running_loop().time() + timeout_s
    while runtime.reloading:
        assert asyncio.get_running_loop().time() < deadline, "the reload never finished"
        await asyncio.sleep(0.05)
        await runtime.maybe_reload()


@pytest.mark.parametrize("name", ["../x.onnx", "/tmp/x.onnx", "graphs/x.onnx", ".."])
def test_a_runtime_file_outside_the_bundle_folder_is_refused(tiny_trail_bundle, tmp_path, name):
    bundle = copy_bundle(tiny_trail_bundle, tmp_path / "bundle")
    shutil.copy(bundle / "forecast.onnx", tmp_path / "x.onnx")    # what "../x.onnx" would open
    edit_manifest(bundle, lambda m: m["graph"].update(forecast=name))
    with pytest.raises(BundleNameError, match="plain file names"):
        verify_bundle(bundle)


@pytest.mark.parametrize("name", ["../forecast.onnx", "/tmp/forecast.onnx"])
def test_a_listed_file_with_a_path_instead_of_a_plain_name_is_refused(tiny_trail_bundle, tmp_path, name):
    bundle = copy_bundle(tiny_trail_bundle, tmp_path / "bundle")
    edit_manifest(bundle, lambda m: m["files"].update({name: m["files"].pop("config.json")}))
    with pytest.raises(BundleNameError, match="plain file names"):
        verify_bundle(bundle)


def test_a_runtime_file_not_listed_with_a_sha256_is_refused(tiny_trail_bundle, tmp_path):
    bundle = copy_bundle(tiny_trail_bundle, tmp_path / "bundle")
    shutil.copy(bundle / "forecast.onnx", bundle / "other.onnx")
    edit_manifest(bundle, lambda m: m["graph"].update(forecast="other.onnx"))
    with pytest.raises(BundleNameError, match="'other.onnx' is not listed"):
        load_bundle_scorer(str(bundle), providers="cpu")


def test_a_symlinked_bundle_file_is_refused(tiny_trail_bundle, tmp_path):
    bundle = copy_bundle(tiny_trail_bundle, tmp_path / "bundle")
    (bundle / "text.onnx").rename(tmp_path / "text.onnx")
    (bundle / "text.onnx").symlink_to(tmp_path / "text.onnx")
    with pytest.raises(BundleError, match="not symlinks"):
        verify_bundle(bundle)


def test_files_swapped_after_verification_are_never_loaded(tiny_trail_bundle, tmp_path):
    reference = load_bundle_scorer(str(tiny_trail_bundle), providers="cpu", intra_op_threads=1)
    bundle = copy_bundle(tiny_trail_bundle, tmp_path / "bundle")
    verified = verify_bundle(bundle)
    for name in ("step.onnx", "text.onnx", "forecast.onnx", "tokenizer.json"):
        (bundle / name).write_bytes(b"not what was verified")   # loading these from disk would fail

    scorer = scorer_from_verified(verified, providers="cpu", intra_op_threads=1)
    batch = synthetic_batch(16, seed=5)
    forecast = scorer.forecast(batch)
    np.testing.assert_array_equal(forecast, reference.forecast(batch))
    assert scorer.explain(batch, forecast, np.arange(2), max_new_tokens=4) == \
        reference.explain(batch, forecast, np.arange(2), max_new_tokens=4)


def test_the_pin_is_the_sha256_of_the_manifest_bytes(tiny_trail_bundle):
    pin = manifest_sha256(tiny_trail_bundle)
    scorer = load_bundle_scorer(str(tiny_trail_bundle), providers="cpu", intra_op_threads=1, expected_sha256=pin)
    assert scorer.manifest_sha256 == pin == verify_bundle(tiny_trail_bundle).manifest_sha256


def test_a_pinned_sha256_refuses_a_different_valid_bundle_at_start(tiny_trail_bundle, tmp_path):
    pin = manifest_sha256(tiny_trail_bundle)
    other = relabelled_copy(tiny_trail_bundle, tmp_path / "other", "not-approved")
    load_bundle_scorer(str(other), providers="cpu", intra_op_threads=1)   # valid on its own
    with pytest.raises(BundlePinError, match=f"not the pinned {pin}"):
        ScorerRuntime(str(other), scorer_sha256=pin)


def test_the_worker_exits_with_code_2_before_kafka_when_the_bundle_is_not_the_pinned_one(
        tiny_trail_bundle, tmp_path, capsys):
    from streams.cli import main

    other = relabelled_copy(tiny_trail_bundle, tmp_path / "other", "not-approved")
    code = main(["worker", "--scorer", str(other), "--scorer-sha256", manifest_sha256(tiny_trail_bundle),
                 "--bootstrap", "127.0.0.1:9", "--data-dir", str(tmp_path / "data")])
    assert code == 2
    err = capsys.readouterr().err
    assert "trail worker: error:" in err and "not the bundle that was approved" in err


def test_a_malformed_pin_is_a_usage_error(capsys):
    from streams.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["worker", "--scorer", "velocity", "--scorer-sha256", "abc123"])
    assert exited.value.code == 2
    assert "64-hex-digit manifest sha256" in capsys.readouterr().err


def test_a_pinned_sha256_refuses_a_different_valid_bundle_on_hot_reload(tiny_trail_bundle, tmp_path, caplog):
    bundle = copy_bundle(tiny_trail_bundle, tmp_path / "bundle")
    runtime = ScorerRuntime(str(bundle), reload_check_s=0, scorer_sha256=manifest_sha256(bundle))
    approved = runtime.scorer
    assert approved.name == tiny_trail_bundle.name

    relabelled_copy(tiny_trail_bundle, tmp_path / "other", "not-approved")
    shutil.copy(tmp_path / "other" / MANIFEST, bundle / MANIFEST)   # a different valid bundle lands on disk
    touch_later(bundle / MANIFEST)
    with caplog.at_level("ERROR", logger="trail.scorer"):
        asyncio.run(settle_reload(runtime))

    assert runtime.scorer is approved and runtime.reloads == 0
    assert "refused" in caplog.text and "not the bundle that was approved" in caplog.text


def test_hot_reload_without_a_pin_swaps_in_the_changed_bundle_verified_off_the_event_loop(
        tiny_trail_bundle, tmp_path, caplog):
    bundle = copy_bundle(tiny_trail_bundle, tmp_path / "bundle")
    runtime = ScorerRuntime(str(bundle), reload_check_s=0)
    relabelled_copy(tiny_trail_bundle, tmp_path / "other", "renamed")
    shutil.copy(tmp_path / "other" / MANIFEST, bundle / MANIFEST)
    touch_later(bundle / MANIFEST)
    with caplog.at_level("INFO", logger="trail.scorer"):
        asyncio.run(settle_reload(runtime))

    assert runtime.scorer.name == "renamed" and runtime.reloads == 1
    loaded = [r for r in caplog.records if r.getMessage().startswith("scoring with TRAIL bundle renamed")]
    assert loaded and loaded[0].threadName.startswith("trail-reload")
