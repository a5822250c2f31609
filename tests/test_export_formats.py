"""`ajuste export --format hf|onnx|torchscript` and `ajuste predict` inputs/outputs, on tiny runs.

Each export is loaded the way a user outside ajuste would load it (transformers with remote code, timm
`local-dir:`, onnxruntime, torch.jit) and must reproduce the run's logits on inputs of another batch size
(and sequence length) than the ones it was exported or checked with.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ajuste.cli.main import main
from ajuste.config import RunConfig
from ajuste.errors import AjusteError

TEXTS = ["great lovely film", "awful dreadful film, I want my evening back", "fine", "superb superb superb",
         "poor", "bad film"]


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    assert lines[0].startswith("error:"), lines[0]
    return lines[0]


def _write_images(root: Path, n: int = 10, size: int = 40) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, cls in enumerate(["red", "blue"]):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            base = np.array([(200, 40, 40), (40, 40, 200)][k])
            Image.fromarray((base + rng.integers(-30, 30, (size, size + 8, 3))).clip(0, 255).astype(np.uint8)).save(
                root / cls / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return _write_images(tmp_path_factory.mktemp("imgs") / "colours")


def _train(out: Path, **over) -> Path:
    from ajuste.training.run import train_run

    base = {"train.epochs": 1, "train.min_steps": 0, "train.bf16": "off", "strategy.head_epochs": 1}
    train_run(cfg=RunConfig().override({**base, **over}), out=out, progress=False)
    return out


@pytest.fixture(scope="module")
def text_csv(tmp_path_factory) -> Path:
    rows = ["text,label"] + [f"{w} film {i},{'pos' if i % 2 else 'neg'}"
                             for i, w in enumerate(["awful", "great", "bad", "lovely", "poor", "superb"] * 8)]
    path = tmp_path_factory.mktemp("texts") / "tiny.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def image_run(images, tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("img") / "run", **{
        "model.name": "timm/test_efficientnet", "model.pretrained": False, "data.source": str(images),
        "data.image_size": 32, "data.batch_size": 16, "strategy.name": "full"})


@pytest.fixture(scope="module")
def image_lora_run(images, tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("img-lora") / "run", **{
        "model.name": "timm/test_efficientnet", "model.pretrained": False, "data.source": str(images),
        "data.image_size": 32, "data.batch_size": 16, "strategy.name": "lora"})


@pytest.fixture(scope="module", params=["mean-full", "cls-lora"])
def text_run(request, tiny_bert_dir, text_csv, tmp_path_factory) -> Path:
    pooling, strategy = request.param.split("-")
    return _train(tmp_path_factory.mktemp(f"text-{request.param}") / "run", **{
        "model.name": str(tiny_bert_dir), "model.pooling": pooling, "data.source": str(text_csv),
        "data.batch_size": 16, "strategy.name": strategy})


# The logits `ajuste predict` takes the softmax of: the network's divided by the run's calibration temperature,
# which the onnx, torchscript and hf-text exports divide by in the network too (timm's format in config.json).
def _ajuste_text_logits(run_dir: Path, texts: list[str]) -> torch.Tensor:
    from ajuste.training.run_eval import load_run

    run = load_run(run_dir)
    enc = run.backbone.tokenizer(texts, padding=True, truncation=True, max_length=run.preprocessing.max_length,
                                 return_tensors="pt")
    with torch.no_grad():
        return run.backbone(dict(enc)).float() / run.temperature


def _ajuste_image_logits(run_dir: Path, x: torch.Tensor) -> torch.Tensor:
    from ajuste.training.run_eval import load_run

    run = load_run(run_dir)
    with torch.no_grad():
        return run.backbone.eval()(x).float() / run.temperature


def _timm_temperature(folder: Path) -> float:
    return json.loads((folder / "config.json").read_text())["ajuste_calibration"]["temperature"]


# --- hf ------------------------------------------------------------------------------------------------


def test_hf_text_loads_with_transformers_and_matches(text_run, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from ajuste.export import export_run
    from ajuste.training.run_eval import predict_inputs

    res = export_run(run_dir=text_run, out=tmp_path / "hf", format="hf")
    assert res.max_abs_diff < 1e-4
    assert res.merged == (json.loads((text_run / "backbone.json").read_text()).get("peft") is not None)
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    classes = json.loads((text_run / "labels.json").read_text())
    assert cfg["id2label"] == {str(i): c for i, c in enumerate(classes)} and cfg["label2id"]["pos"] == 1
    assert cfg["pooling"] == json.loads((text_run / "backbone.json").read_text())["pooling"]

    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf", trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf", trust_remote_code=True)
    assert not any("lora" in k for k in model.state_dict())
    with torch.no_grad():
        got = model(**tok(TEXTS, padding=True, truncation=True, return_tensors="pt")).logits
    torch.testing.assert_close(got, _ajuste_text_logits(text_run, TEXTS), atol=1e-4, rtol=1e-4)

    clf = pipeline("text-classification", model=model, tokenizer=tok)
    rows = predict_inputs(text_run, TEXTS)
    assert [r["label"] for r in clf(TEXTS)] == [r["label"] for r in rows]


def test_hf_text_without_trust_remote_code_does_not_load_a_wrong_model(text_run, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from ajuste.export import export_run

    export_run(run_dir=text_run, out=tmp_path / "hf", format="hf")
    # BERT's own classifier (pooler + tanh) would silently give other logits: the folder must not load as one.
    with pytest.raises(Exception):
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf", trust_remote_code=False)


def test_hf_image_is_a_plain_timm_checkpoint(image_run, images, tmp_path):
    import timm
    from PIL import Image
    from safetensors.torch import load_file

    from ajuste.export import export_run
    from ajuste.training.run_eval import predict_inputs

    res = export_run(run_dir=image_run, out=tmp_path / "hf", format="hf")
    assert res.max_abs_diff < 1e-5 and sorted(res.files) == ["config.json", "export.json", "model.safetensors"]
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    pre = json.loads((image_run / "preprocessing.json").read_text())
    assert cfg["architecture"] == "test_efficientnet" and cfg["num_classes"] == 2
    assert cfg["label_names"] == ["blue", "red"]
    pc = cfg["pretrained_cfg"]
    assert pc["input_size"] == [3, 32, 32] and pc["mean"] == pre["mean"] and pc["std"] == pre["std"]
    assert pc["interpolation"] == pre["interpolation"] and not pre["square"]
    assert pc["crop_pct"] == pytest.approx(pre["image_size"] / pre["base_size"]) and "tag" not in pc

    # The keys are exactly timm's architecture with a 2-class head (the dropout wrapper adds none).
    plain = timm.create_model("test_efficientnet", pretrained=False, num_classes=2)
    plain.load_state_dict(load_file(tmp_path / "hf" / "model.safetensors"), strict=True)

    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    expected = _ajuste_image_logits(image_run, x)
    a = timm.create_model(f"local-dir:{tmp_path / 'hf'}", pretrained=True).eval()
    b = timm.create_model("test_efficientnet", pretrained=True, num_classes=2, pretrained_cfg_overlay=dict(
        file=str(tmp_path / "hf" / "model.safetensors"), num_classes=2)).eval()
    t = _timm_temperature(tmp_path / "hf")  # a plain timm network: the temperature is the user's to apply
    with torch.no_grad():
        torch.testing.assert_close(a(x) / t, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b(x) / t, expected, atol=1e-5, rtol=1e-5)

        # timm's own eval transform, built from the exported config, agrees with `ajuste predict` on files.
        transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=a))
        files = sorted((images / "red").glob("*.png"))[:3] + sorted((images / "blue").glob("*.png"))[:3]
        probs = torch.softmax(a(torch.stack([transform(Image.open(f).convert("RGB")) for f in files])) / t, 1)
    rows = predict_inputs(image_run, [str(f) for f in files])
    assert [cfg["label_names"][int(k)] for k in probs.argmax(1)] == [r["label"] for r in rows]
    assert probs.max(1).values.numpy() == pytest.approx([r["probability"] for r in rows], abs=0.02)


def test_hf_image_lora_run_is_merged(image_lora_run, tmp_path):
    import timm

    from ajuste.export import export_run

    res = export_run(run_dir=image_lora_run, out=tmp_path / "hf", format="hf")
    assert res.merged and res.method == "lora" and res.max_abs_diff < 1e-4
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    model = timm.create_model(f"local-dir:{tmp_path / 'hf'}", pretrained=True).eval()
    with torch.no_grad():
        got = model(x) / _timm_temperature(tmp_path / "hf")
        torch.testing.assert_close(got, _ajuste_image_logits(image_lora_run, x), atol=1e-4, rtol=1e-4)


# --- onnx, torchscript -----------------------------------------------------------------------------------


def test_onnx_image_has_a_dynamic_batch_axis(image_run, tmp_path):
    import onnxruntime as ort

    from ajuste.export import export_run

    res = export_run(run_dir=image_run, out=tmp_path / "onnx", format="onnx")
    assert res.max_abs_diff < 1e-4 and res.exporter in ("dynamo", "torchscript")
    assert json.loads((tmp_path / "onnx" / "labels.json").read_text()) == ["blue", "red"]
    assert json.loads((tmp_path / "onnx" / "preprocessing.json").read_text())["inputs"] == ["pixel_values"]
    sess = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert not isinstance(sess.get_inputs()[0].shape[0], int)  # symbolic batch dimension
    for n in (1, 9):
        x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(n))
        got = sess.run(["logits"], {"pixel_values": x.numpy()})[0]
        np.testing.assert_allclose(got, _ajuste_image_logits(image_run, x).numpy(), atol=1e-4, rtol=1e-4)


def test_onnx_text_has_dynamic_batch_and_sequence_axes(text_run, tmp_path):
    import onnxruntime as ort
    from transformers import AutoTokenizer

    from ajuste.export import export_run

    export_run(run_dir=text_run, out=tmp_path / "onnx", format="onnx")
    sess = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    assert names == json.loads((tmp_path / "onnx" / "preprocessing.json").read_text())["inputs"]
    assert all(not isinstance(d, int) for i in sess.get_inputs() for d in i.shape)
    tok = AutoTokenizer.from_pretrained(tmp_path / "onnx")
    for texts in (TEXTS[:1], TEXTS, [t * 8 for t in TEXTS[:3]]):
        enc = tok(texts, padding=True, truncation=True, return_tensors="np")
        got = sess.run(["logits"], {n: enc[n] for n in names})[0]
        np.testing.assert_allclose(got, _ajuste_text_logits(text_run, texts).numpy(), atol=1e-4, rtol=1e-4)


def _check_torchscript(run: Path, out: Path) -> None:
    from ajuste.export import export_run

    res = export_run(run_dir=run, out=out, format="torchscript")
    assert res.max_abs_diff < 1e-4 and "model.pt" in res.files
    model = torch.jit.load(str(out / "model.pt"))
    with torch.no_grad():
        if res.files.count("tokenizer.json") == 0:
            x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(6))
            got, expected = model(x), _ajuste_image_logits(run, x)
        else:
            from transformers import AutoTokenizer

            names = json.loads((out / "preprocessing.json").read_text())["inputs"]
            texts = [t * 3 for t in TEXTS]  # longer than the trace's example batch
            enc = AutoTokenizer.from_pretrained(out)(texts, padding=True, truncation=True, return_tensors="pt")
            got, expected = model(*[enc[n] for n in names]), _ajuste_text_logits(run, texts)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_torchscript_image_reloads_with_the_same_logits(image_run, tmp_path):
    _check_torchscript(image_run, tmp_path / "ts")


def test_torchscript_text_reloads_with_the_same_logits(text_run, tmp_path):
    _check_torchscript(text_run, tmp_path / "ts")


def test_default_format_keeps_the_run_directory_export(image_lora_run, tmp_path):
    from ajuste.export import export_run
    from ajuste.training.run_eval import load_run

    res = export_run(run_dir=image_lora_run, out=tmp_path / "plain")
    assert res.format == "ajuste" and not res.merged and res.peft_needed
    assert load_run(tmp_path / "plain").backbone.peft["method"] == "lora"
    assert json.loads((tmp_path / "plain" / "summary.json").read_text())["export"]["format"] == "ajuste"


# --- refusals: one line each -------------------------------------------------------------------------------


def test_prompt_tuning_run_refuses_plain_formats(tiny_bert_dir, text_csv, tmp_path, capsys):
    run = _train(tmp_path / "run", **{"model.name": str(tiny_bert_dir), "data.source": str(text_csv),
                                      "data.batch_size": 16, "strategy.name": "prompt-tuning"})
    for fmt in ("hf", "onnx", "torchscript"):
        assert main(["export", str(run), "--format", fmt, "--out", str(tmp_path / fmt)]) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert "prompt-tuning" in line and "--format ajuste" in line
        assert not (tmp_path / fmt).exists()


def test_missing_onnx_names_the_extra(image_run, tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert main(["export", str(image_run), "--format", "onnx", "--out", str(tmp_path / "o")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "onnxruntime" in line and "ajuste[onnx]" in line


def test_unknown_format_is_one_line(image_run, tmp_path, capsys):
    assert main(["export", str(image_run), "--format", "tflite", "--out", str(tmp_path / "o")]) == 2
    assert "ajuste, hf, onnx, torchscript" in _one_error_line(capsys.readouterr().err)


def test_mismatch_refuses_and_writes_nothing(image_run, tmp_path, monkeypatch):
    import ajuste.export as ex

    write, check = ex._FORMATS_IMPL["torchscript"]
    monkeypatch.setitem(ex._FORMATS_IMPL, "torchscript",
                        (write, lambda *a: [t + 0.5 for t in check(*a)]))  # a broken export
    with pytest.raises(AjusteError, match="export check failed"):
        ex.export_run(run_dir=image_run, out=tmp_path / "ts", format="torchscript")
    assert not (tmp_path / "ts").exists() and list(tmp_path.iterdir()) == []  # no staging left behind


def test_output_directory_rules(image_run, tmp_path, capsys):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    # non-empty: refused without --overwrite; and with it, a directory that is no export is never deleted
    assert main(["export", str(image_run), "--format", "onnx", "--out", str(other)]) == 2
    assert "not empty" in _one_error_line(capsys.readouterr().err)
    assert main(["export", str(image_run), "--format", "onnx", "--out", str(other), "--overwrite"]) == 2
    assert "not an earlier export" in _one_error_line(capsys.readouterr().err)
    assert (other / "keep.txt").read_text() == "mine"
    # an earlier export is replaced with --overwrite, even by another format
    assert main(["export", str(image_run), "--format", "onnx", "--out", str(tmp_path / "e")]) == 0
    assert main(["export", str(image_run), "--format", "torchscript", "--out", str(tmp_path / "e")]) == 2
    assert main(["export", str(image_run), "--format", "torchscript", "--out", str(tmp_path / "e"),
                 "--overwrite"]) == 0
    assert (tmp_path / "e" / "model.pt").is_file() and not (tmp_path / "e" / "model.onnx").exists()
    capsys.readouterr()
    # an output that contains the run would be deleted with it
    assert main(["export", str(image_run), "--out", str(image_run.parent), "--overwrite"]) == 2
    assert "contains the run directory" in _one_error_line(capsys.readouterr().err)
    assert (image_run / "model.safetensors").is_file()


def test_overwrite_never_replaces_a_training_run(image_run, tmp_path, capsys):
    """Issue 33 item 3: any folder with backbone.json counted as an export, so `export --overwrite` replaced
    another run directory, finished or not. An ajuste-format export (laid out like a run) still is replaced."""
    import shutil

    finished = tmp_path / "other_run"
    shutil.copytree(image_run, finished)
    unfinished = tmp_path / "unfinished_run"
    shutil.copytree(image_run, unfinished)
    (unfinished / "summary.json").unlink()
    (unfinished / "status.json").write_text('{"status": "running"}')
    for target in (finished, unfinished):
        before = sorted(p.name for p in target.iterdir())
        assert main(["export", str(image_run), "--out", str(target), "--overwrite"]) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert "holds a training run" in line, line
        assert sorted(p.name for p in target.iterdir()) == before
    # an earlier export in ajuste's own format is still an export: --overwrite replaces it
    assert main(["export", str(image_run), "--out", str(tmp_path / "exp")]) == 0
    assert main(["export", str(image_run), "--out", str(tmp_path / "exp"), "--overwrite"]) == 0
    assert (tmp_path / "exp" / "model.safetensors").is_file()


def test_file_names_from_a_run_cannot_leave_the_export(text_run, tmp_path, capsys):
    import shutil

    from ajuste.export import _inside

    for bad in ("../escape.json", "/etc/passwd", "..", "a/../../b"):
        with pytest.raises(AjusteError, match="outside"):
            _inside(tmp_path, bad)
    # a run whose hf/ folder links to a file elsewhere: refused, nothing copied
    run = tmp_path / "run"
    shutil.copytree(text_run, run)
    secret = tmp_path / "secret.txt"
    secret.write_text("not for export")
    (run / "hf" / "vocab_extra.txt").symlink_to(secret)
    assert main(["export", str(run), "--out", str(tmp_path / "out")]) == 2
    assert "symbolic link" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


# --- predict: inputs and outputs ---------------------------------------------------------------------------


def test_predict_glob_and_stdin_for_images(image_run, images, monkeypatch, capsys):
    assert main(["predict", str(image_run), str(images / "red" / "[0-2].png"), "-f", "jsonl"]) == 0
    rows = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [Path(r["input"]).name for r in rows] == ["0.png", "1.png", "2.png"]

    files = sorted((images / "blue").glob("*.png"))[:4]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(map(str, files)) + "\n\n"))
    assert main(["predict", str(image_run), "-", "-f", "jsonl"]) == 0
    assert [json.loads(ln)["input"] for ln in capsys.readouterr().out.splitlines()] == list(map(str, files))

    assert main(["predict", str(image_run), str(images / "*.jpg")]) == 2
    assert "no image files match" in _one_error_line(capsys.readouterr().err)
    monkeypatch.setattr("sys.stdin", io.StringIO("nowhere/x.png\n"))
    assert main(["predict", str(image_run), "-"]) == 2
    assert "nowhere/x.png" in _one_error_line(capsys.readouterr().err)


def test_predict_text_tables_stdin_and_output_files(text_run, tmp_path, monkeypatch, capsys):
    (tmp_path / "a.tsv").write_text("id\ttext\n1\tgreat lovely film\n2\tpoor\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "awful film"}) + "\n")
    monkeypatch.setattr("sys.stdin", io.StringIO("superb\n\nbad film\n"))
    out_csv = tmp_path / "pred.csv"
    assert main(["predict", str(text_run), str(tmp_path / "*.tsv"), str(tmp_path / "b.jsonl"), "-",
                 "what?", "--output", str(out_csv)]) == 0
    assert "wrote 6 predictions" in capsys.readouterr().out
    import csv

    rows = list(csv.DictReader(out_csv.open()))
    assert [r["input"] for r in rows] == [f"{tmp_path / 'a.tsv'}:2", f"{tmp_path / 'a.tsv'}:3", "b.jsonl:1",
                                          "stdin:1", "stdin:3", "what?"]
    assert all(r["label"] in ("neg", "pos") and 0.5 <= float(r["probability"]) <= 1 for r in rows)

    out_jsonl = tmp_path / "pred.jsonl"
    assert main(["predict", str(text_run), *TEXTS[:2], "-o", str(out_jsonl)]) == 0
    lines = [json.loads(ln) for ln in out_jsonl.read_text().splitlines()]
    assert [r["input"] for r in lines] == TEXTS[:2] and {"label", "probability"} <= set(lines[0])
    capsys.readouterr()

    assert main(["predict", str(text_run), "hello", "--output", str(tmp_path / "pred.txt")]) == 2
    assert ".csv or .jsonl" in _one_error_line(capsys.readouterr().err)
    assert main(["predict", str(text_run), str(out_csv), "--output", str(out_csv)]) == 2
    assert "also an input" in _one_error_line(capsys.readouterr().err)


def test_onnx_without_onnxscript_uses_the_legacy_exporter(text_run, tmp_path, monkeypatch):
    import importlib.util

    from ajuste.export import export_run

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    res = export_run(run_dir=text_run, out=tmp_path / "onnx", format="onnx")
    assert res.exporter == "torchscript" and res.max_abs_diff < 1e-4  # checked on a longer second batch
    assert json.loads((tmp_path / "onnx" / "export.json").read_text())["exporter"] == "torchscript"
