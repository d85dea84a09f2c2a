"""ONNX export and serving: parity with PyTorch, verified bundles, provider selection, no torch when serving."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from export.bench_score import synthetic_batch
from export.bundle import BundleError, resolve_bundle_dir
from export.onnx_scorer import load_bundle_scorer
from export.runtime import CPU, create_session, nvidia_device_present
from models.prompts import prompt_inputs
from models.scoring import Scorer

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny TRAIL model (the default configuration: output vocabulary, copy path) trained for 12 steps on ml-100k
    (seconds), saved like `trail train` saves it. After 2 steps its copy path still spreads its mass by token
    frequency and it writes only spaces, which decode to "": 12 steps give visible tokens to compare."""
    from models.train import train
    from models.train_config import TrainConfig

    out = tmp_path_factory.mktemp("models") / "trail-tiny-test"
    cfg = TrainConfig.for_base("tiny", steps=12, batch_size=8, explain_rows=2, contrastive_rows=2, val_days=0)
    train(cfg, out)
    return out


@pytest.fixture(scope="module")
def bundle_dir(tiny_model_dir: Path, tmp_path_factory) -> Path:
    """The fp32 bundle, made through the `trail export` command."""
    from streams.cli import main

    out = tmp_path_factory.mktemp("bundles") / "trail-tiny-test"
    assert main(["export", str(tiny_model_dir), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def torch_scorer(tiny_model_dir: Path):
    from models.trail_scorer import load_trail_scorer

    return load_trail_scorer(str(tiny_model_dir))


@pytest.fixture(scope="module")
def onnx_scorer(bundle_dir: Path):
    return load_bundle_scorer(str(bundle_dir), providers="cpu")


@pytest.fixture(scope="module")
def batch():
    return synthetic_batch(48, seed=3)


def test_numpy_prompt_inputs_equal_the_torch_helpers(torch_scorer, onnx_scorer, batch):
    from models.trail import numeric_features as torch_numeric_features
    from models.trail import prompt_inputs as torch_prompt_inputs

    torch_features = torch_numeric_features(batch.bucket_counts, batch.signals, batch.spec.window_slots)
    np.testing.assert_array_equal(onnx_scorer.features(batch), torch_features)
    rows = onnx_scorer.tokens.prompts(batch.texts)
    assert rows == torch_scorer.tokens.prompts(batch.texts)
    lines = ["last week 3; forecast 4.5, rising.", "x", "Überraschung: 12% (ok)"]
    assert onnx_scorer.tokens.evidence(lines) == torch_scorer.tokens.evidence(lines)
    # the shared prompt builder reads the transformers tokenizer's backend: the same ids as transformers itself
    hf = torch_scorer.tokenizer
    expected = hf([f" {line}\n" for line in lines], add_special_tokens=False)["input_ids"]
    assert torch_scorer.tokens.evidence(lines) == expected
    assert [r[1:] for r in torch_scorer.tokens.text_rows(batch.texts)] == [
        hf.encode(t, add_special_tokens=False)[:torch_scorer.config.max_text_tokens] for t in batch.texts]
    feeds = prompt_inputs(rows, torch_features, 4)
    for name, tensor in zip(("input_ids", "attention_mask", "position_ids", "numeric_prefix"),
                            torch_prompt_inputs(rows, torch_features, 4), strict=True):
        np.testing.assert_array_equal(feeds[name], tensor.numpy())


def test_onnx_forecast_and_logits_match_torch_within_1e_4(torch_scorer, onnx_scorer, batch):
    from export.parity import parity_report

    report = parity_report(torch_scorer, onnx_scorer, batch, n_explain=0)
    assert report["max_abs_diff"]["forecast_log1p"] < 1e-4
    assert report["max_abs_diff"]["text_vec"] < 1e-4
    assert report["max_abs_diff"]["logits"] < 1e-4
    np.testing.assert_allclose(onnx_scorer.forecast(batch), torch_scorer.forecast(batch), rtol=1e-4, atol=1e-4)


def test_onnx_greedy_text_is_identical_to_torch(torch_scorer, onnx_scorer, batch):
    from export.parity import parity_report

    report = parity_report(torch_scorer, onnx_scorer, batch.subset(range(8)), n_explain=8, max_new_tokens=24)
    assert report["greedy_text_match"], report["examples"]
    assert all(example["onnx"] for example in report["examples"])


def test_explanations_respect_the_length_cap(onnx_scorer, batch):
    forecast = onnx_scorer.forecast(batch)
    rows = onnx_scorer.explanation_rows(batch, forecast, np.arange(4))
    generated = onnx_scorer.runtime.generate(rows, onnx_scorer.features(batch)[:4], max_new_tokens=5)
    assert all(1 <= len(ids) <= 5 for ids in generated)


def test_bundle_scorer_is_a_scorer_named_by_its_manifest(onnx_scorer, bundle_dir):
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert isinstance(onnx_scorer, Scorer)
    assert (onnx_scorer.name, onnx_scorer.version, onnx_scorer.sha256) == (
        manifest["name"], manifest["version"], manifest["sha256"])
    assert set(manifest["files"]) >= {"step.onnx", "text.onnx", "forecast.onnx", "config.json",
                                      "tokenizer.json", "model_card.json"}


@pytest.mark.parametrize("tampered", ["step.onnx", "tokenizer.json"])
def test_tampered_bundle_is_refused_naming_the_file(bundle_dir, tmp_path, tampered):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    with open(copy / tampered, "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match=tampered.replace("/", ".")):
        load_bundle_scorer(str(copy), providers="cpu")


def test_bundle_without_manifest_is_refused(bundle_dir, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="manifest.json missing"):
        load_bundle_scorer(str(copy))


def test_a_bundle_name_resolves_under_artifacts_bundles():
    assert resolve_bundle_dir("trail-tiny") == REPO_ROOT / "artifacts" / "bundles" / "trail-tiny"


def test_default_bundle_folder_is_the_model_folder_name_under_artifacts_bundles():
    from export.onnx_export import default_bundle_dir

    bundles = REPO_ROOT / "artifacts" / "bundles"
    assert default_bundle_dir("trail-tiny", int8=False) == bundles / "trail-tiny"
    assert default_bundle_dir("trail-smollm2", int8=True) == bundles / "trail-smollm2-int8"


def test_cpu_provider_is_selected_and_reported(bundle_dir):
    _, report = create_session(bundle_dir / "forecast.onnx", providers="cpu", intra_op_threads=1)
    assert (report.active, report.fell_back, report.device) == (CPU, False, "cpu")


@pytest.mark.skipif(nvidia_device_present(), reason="this machine has an NVIDIA device")
def test_asking_for_cuda_without_a_gpu_is_detected_as_a_fallback_and_logged(bundle_dir, caplog):
    with caplog.at_level("WARNING", logger="export.runtime"):
        _, report = create_session(bundle_dir / "forecast.onnx", providers="cuda", intra_op_threads=1)
    assert report.fell_back and report.active == CPU
    assert "CUDAExecutionProvider" in report.reason
    assert "forecast.onnx: asked for CUDAExecutionProvider" in caplog.text


@pytest.mark.skipif(nvidia_device_present(), reason="this machine has an NVIDIA device")
def test_auto_runs_on_cpu_without_asking_for_cuda_when_there_is_no_device(bundle_dir):
    _, report = create_session(bundle_dir / "forecast.onnx", providers="auto", intra_op_threads=1)
    assert (report.active, report.fell_back) == (CPU, False)


def test_serving_path_never_imports_torch(bundle_dir):
    code = (
        "import sys, numpy as np\n"
        "from export.onnx_scorer import load_bundle_scorer\n"
        "from export.bench_score import synthetic_batch\n"
        f"s = load_bundle_scorer({str(bundle_dir)!r}, providers='cpu')\n"
        "b = synthetic_batch(8)\n"
        "f = s.forecast(b)\n"
        "s.explain(b, f, np.arange(2), max_new_tokens=3)\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=120)


def test_int8_bundle_forecasts_equal_the_fp32_ones(tiny_model_dir, onnx_scorer, batch, tmp_path):
    from export.onnx_export import export_bundle

    manifest = export_bundle(str(tiny_model_dir), tmp_path / "int8", int8=True)
    int8 = load_bundle_scorer(str(tmp_path / "int8"), providers="cpu")
    assert manifest["precision"] == "int8-dynamic" and int8.sha256 != onnx_scorer.sha256
    fp32_log1p = onnx_scorer.forecast_log1p(onnx_scorer.features(batch), batch.texts)
    int8_log1p = int8.forecast_log1p(int8.features(batch), batch.texts)
    np.testing.assert_allclose(int8_log1p, fp32_log1p, atol=1e-5)   # only the generator is quantised


def test_bench_score_prints_the_documented_keys(bundle_dir, capsys):
    from streams.cli import main

    assert main(["bench", "score", "--bundle", str(bundle_dir), "--providers", "cpu", "--items", "64",
                 "--explain-batch", "4", "--new-tokens", "4", "--repeats", "2", "--parity-items", "8",
                 "--parity-explain", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("provider", "forecast_items_per_s", "explain_batch", "explain_p50_ms", "explain_p99_ms",
                "max_abs_diff_vs_torch", "greedy_text_match"):
        assert key in result, key
    assert result["provider"] == CPU and result["explain_batch"] == 4
    assert result["max_abs_diff_vs_torch"] < 1e-4 and result["greedy_text_match"] is True


def test_item_texts_are_read_once_then_served_from_the_cache(onnx_scorer, batch, monkeypatch):
    onnx_scorer.forecast(batch)
    assert set(onnx_scorer.runtime.text_cache.missing(batch.texts)) == set()
    first = onnx_scorer.forecast(batch)

    def must_not_run(*args, **kwargs):
        raise AssertionError("a cached item text was read again")

    monkeypatch.setattr(onnx_scorer.runtime, "read_texts", must_not_run)
    np.testing.assert_array_equal(onnx_scorer.forecast(batch), first)


def test_text_vector_cache_is_bounded_and_drops_the_least_recently_used():
    from models.text_vectors import TextVectorCache

    cache = TextVectorCache(capacity=2)
    cache.put(["a", "b"], np.eye(2, dtype=np.float32))
    cache.get(["a"])                       # "a" used: "b" is now the oldest
    cache.put(["c"], np.ones((1, 2), dtype=np.float32))
    assert len(cache) == 2 and cache.missing(["a", "b", "c"]) == ["b"]
    np.testing.assert_array_equal(cache.get(["c", "a"]), [[1, 1], [1, 0]])


def test_cli_reports_a_missing_bundle_in_one_line_with_exit_code_2(tmp_path, capsys):
    from streams.cli import main

    assert main(["bench", "score", "--bundle", str(tmp_path / "none"), "--json"]) == 2
    err = capsys.readouterr().err
    assert "trail bench: error: no TRAIL bundle at" in err and "Traceback" not in err


@pytest.mark.parametrize("kind", ["ema", "reddit-decay"])
def test_a_forecast_base_is_inside_the_onnx_forecast_graph(kind, tmp_path):
    """With --forecast-base the head forecasts a correction; the forecast graph adds the baseline itself, so the
    runtime's log1p forecast equals torch's without any change to the serving path."""
    import torch

    from export.onnx_export import export_forecast_graph
    from models.features import numeric_features
    from models.trail import TrailConfig, build_model

    model = build_model(TrailConfig(base="tiny", forecast_base=kind), seed=0).eval()
    path = tmp_path / "forecast.onnx"
    export_forecast_graph(model, path)
    session, _ = create_session(path, providers="cpu", intra_op_threads=1)
    b = synthetic_batch(32, seed=5)
    features = numeric_features(b.bucket_counts, b.signals, b.spec.window_slots).astype(np.float32)
    text_vec = np.random.default_rng(0).normal(size=(len(b), model.lm.config.hidden_size)).astype(np.float32)
    (onnx_log1p,) = session.run(None, {"features": features, "text_vec": text_vec})
    with torch.no_grad():
        torch_log1p = model.forecast(torch.from_numpy(features), torch.from_numpy(text_vec))[0].numpy()
    np.testing.assert_allclose(onnx_log1p, torch_log1p, rtol=1e-5, atol=1e-5)
