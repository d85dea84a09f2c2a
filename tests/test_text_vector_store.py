"""No cold-start stall: catalogue texts read ahead into the worker's text vector store (real ONNX sessions, real
RocksDB), reused after a restart, never served to another model, and carried in a bundle by `trail export
--catalogue` under the bundle's sha256 checks. Reads are counted by the runtime, not timed."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from export.bench_score import synthetic_batch
from export.bundle import MANIFEST, BundleError, write_manifest
from export.onnx_scorer import load_bundle_scorer
from streams.scorer_runtime import ScorerRuntime

N_ITEMS = 40


@pytest.fixture(scope="module")
def batch():
    return synthetic_batch(N_ITEMS, seed=5)


@pytest.fixture(scope="module")
def catalogue_file(batch, tmp_path_factory) -> Path:
    """The batch's items as a catalogue items file (JSONL: item_id, text)."""
    path = tmp_path_factory.mktemp("catalogue") / "items.jsonl"
    path.write_text("".join(json.dumps({"item_id": i, "text": t}) + "\n"
                            for i, t in zip(batch.item_ids, batch.texts, strict=True)))
    return path


@pytest.fixture(scope="module")
def catalogue_bundle(tiny_trail_model, catalogue_file, tmp_path_factory) -> Path:
    """`tiny_trail_model` exported with `trail export --catalogue FILE`."""
    from streams.cli import main

    out = tmp_path_factory.mktemp("bundles") / "trail-tiny-catalogue"
    assert main(["export", str(tiny_trail_model), "--out", str(out), "--catalogue", str(catalogue_file)]) == 0
    return out


def rewrite_manifest(folder: Path) -> None:
    """Hash the folder's files again into its manifest (what an export would write for these files)."""
    manifest = json.loads((folder / MANIFEST).read_text())
    write_manifest(folder, {k: v for k, v in manifest.items() if k not in ("format", "files", "sha256", "version")})


@pytest.fixture(scope="module")
def other_bundle(tiny_trail_bundle, tmp_path_factory) -> Path:
    """Another model: the tiny bundle with one weight of its text graph changed, re-hashed like an export."""
    import onnx
    from onnx import numpy_helper

    folder = tmp_path_factory.mktemp("bundles") / "trail-tiny-other"
    shutil.copytree(tiny_trail_bundle, folder)
    graph = onnx.load(str(folder / "text.onnx"))
    weight = max(graph.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.5, weight.name))
    onnx.save(graph, str(folder / "text.onnx"))
    rewrite_manifest(folder)
    return folder


def forecast(runtime: ScorerRuntime, batch) -> np.ndarray:
    values, scorer = asyncio.run(runtime.forecast(batch))
    assert scorer is runtime.scorer, "the model, not the baseline, must have scored"
    return values


def read_ahead(runtime: ScorerRuntime, texts: list[str]) -> None:
    async def deliver() -> None:
        runtime.offer_texts(texts)
        await runtime.wait_prepared()

    asyncio.run(deliver())


def test_without_read_ahead_the_first_step_reads_every_new_text(tiny_trail_bundle, batch, tmp_path):
    runtime = ScorerRuntime(str(tiny_trail_bundle), vector_dir=tmp_path / "vectors")
    forecast(runtime, batch)
    runtime.close()
    assert runtime.scorer.texts_read == len(set(batch.texts)) and runtime.scorer.texts_read_ahead == 0


def test_texts_read_ahead_are_not_read_again_by_the_first_step(tiny_trail_bundle, batch, tmp_path):
    plain = ScorerRuntime(str(tiny_trail_bundle))      # no store, no read-ahead: the reference forecast
    expected = forecast(plain, batch)
    runtime = ScorerRuntime(str(tiny_trail_bundle), vector_dir=tmp_path / "vectors")
    read_ahead(runtime, batch.texts)
    assert runtime.scorer.texts_read_ahead == len(set(batch.texts))
    got = forecast(runtime, batch)
    runtime.close()
    assert runtime.scorer.texts_read == 0
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_a_restart_on_the_same_disk_reads_no_text_again(tiny_trail_bundle, batch, tmp_path):
    first = ScorerRuntime(str(tiny_trail_bundle), vector_dir=tmp_path / "vectors")
    before = forecast(first, batch)
    first.close()
    again = ScorerRuntime(str(tiny_trail_bundle), vector_dir=tmp_path / "vectors")
    read_ahead(again, batch.texts)     # the catalogue delivered again after the restart: nothing left to read
    after = forecast(again, batch)
    again.close()
    assert first.scorer.texts_read == len(set(batch.texts))
    assert again.scorer.texts_read == 0 and again.scorer.texts_read_ahead == 0
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)


def test_another_model_never_serves_these_vectors_and_replaces_them(tiny_trail_bundle, other_bundle, batch,
                                                                   tmp_path):
    store = tmp_path / "vectors"
    first = ScorerRuntime(str(tiny_trail_bundle), vector_dir=store)
    forecast(first, batch)
    first.close()
    other = ScorerRuntime(str(other_bundle), vector_dir=store)
    assert other.scorer.text_key != first.scorer.text_key
    forecast(other, batch)
    kept = other.vector_store.count()
    other.close()
    assert other.scorer.texts_read == len(set(batch.texts))   # every text read by the other text graph
    assert kept == len(set(batch.texts))                      # and the first model's vectors dropped


def test_export_catalogue_vectors_match_the_runtime_and_are_listed_with_their_sha256(catalogue_bundle, batch):
    from infra.integrity import sha256_of

    manifest = json.loads((catalogue_bundle / MANIFEST).read_text())
    name = manifest["graph"]["text_vectors"]
    assert manifest["files"][name]["sha256"] == sha256_of(catalogue_bundle / name)
    scorer = load_bundle_scorer(str(catalogue_bundle), providers="cpu")
    texts = list(dict.fromkeys(batch.texts))
    assert scorer.catalogue.texts == texts
    computed = scorer.text_vectors(texts)        # no store attached: read through the text graph now
    assert scorer.texts_read == len(texts)
    np.testing.assert_allclose(scorer.catalogue.vectors, computed, rtol=1e-5, atol=1e-5)


def test_a_bundle_with_catalogue_vectors_seeds_the_store_so_the_first_step_reads_nothing(catalogue_bundle, batch,
                                                                                         tmp_path):
    runtime = ScorerRuntime(str(catalogue_bundle), vector_dir=tmp_path / "vectors")
    forecast(runtime, batch)
    runtime.close()
    assert runtime.scorer.texts_read == 0 and runtime.scorer.texts_read_ahead == 0


def test_a_changed_catalogue_vector_file_is_refused(catalogue_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(catalogue_bundle, bundle)
    path = bundle / "text_vectors.npz"
    data = bytearray(path.read_bytes())
    data[-200] ^= 0xFF                       # same size, one byte changed
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="text_vectors.npz.*does not match the manifest"):
        load_bundle_scorer(str(bundle), providers="cpu")
    runtime = ScorerRuntime(str(bundle))     # the worker keeps running, on the baseline
    assert runtime.scorer is runtime.baseline


def test_vectors_of_another_text_graph_are_refused_even_when_listed(catalogue_bundle, other_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(other_bundle, bundle)
    shutil.copy2(catalogue_bundle / "text_vectors.npz", bundle / "text_vectors.npz")
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["graph"]["text_vectors"] = "text_vectors.npz"
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    rewrite_manifest(bundle)                 # hashes that match: only the key can tell
    with pytest.raises(BundleError, match="another text graph or tokenizer"):
        load_bundle_scorer(str(bundle), providers="cpu")


def test_the_read_ahead_queue_is_bounded_and_counts_what_it_dropped(tiny_trail_bundle, batch, tmp_path):
    runtime = ScorerRuntime(str(tiny_trail_bundle), vector_dir=tmp_path / "vectors", prepare_capacity=5)
    texts = list(dict.fromkeys(batch.texts))

    async def deliver() -> dict:
        runtime.offer_texts(texts)
        queued = runtime.text_vector_counters()
        await runtime.wait_prepared()
        return queued

    queued = asyncio.run(deliver())
    runtime.close()
    assert queued["text_vectors_pending"] == 5 and queued["text_vectors_dropped"] == len(texts) - 5
    assert runtime.scorer.texts_read_ahead == 5


def test_a_read_ahead_run_reads_at_most_its_limit_and_only_texts_without_a_vector(tiny_trail_bundle, batch,
                                                                                 tmp_path):
    runtime = ScorerRuntime(str(tiny_trail_bundle), vector_dir=tmp_path / "vectors")
    texts = list(dict.fromkeys(batch.texts))
    read, rest = runtime.scorer.prepare_texts(texts, limit=3)
    assert read == 3 and rest == texts[3:]
    read, rest = runtime.scorer.prepare_texts(texts)       # the 3 are stored: looked up, not read again
    runtime.close()
    assert read == len(texts) - 3 and rest == [] and runtime.scorer.texts_read_ahead == len(texts)


def test_export_names_a_missing_catalogue_in_one_line(tiny_trail_model, tmp_path, capsys):
    from streams.cli import main

    assert main(["export", str(tiny_trail_model), "--out", str(tmp_path / "b"),
                 "--catalogue", str(tmp_path / "nope.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "nope.jsonl" in err and "ml-100k" in err and not (tmp_path / "b").exists()
