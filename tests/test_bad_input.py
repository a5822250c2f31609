"""Issue 2: bad input gives ONE clear line on stderr ("error: ..."), a non-zero exit, no traceback, and
nothing half-written that looks complete (no summary.json in --out). Recoverable problems (a few corrupt
images, empty text rows) are warnings, not failures.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from ajuste.cli.main import main
from test_cli import FAST, TINY_IMAGE, one_error_line, run_cli, write_image_folder, write_text_csv


def assert_refused(rc: int, err: str, out_dir: Path | None = None) -> str:
    assert rc != 0
    line = one_error_line(err)
    if out_dir is not None:
        assert not (out_dir / "summary.json").exists()
    return line


def train(data, out: Path, *extra: str) -> list[str]:
    return ["train", str(data), *TINY_IMAGE, *FAST, "-q", "--out", str(out), *extra]


# -------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def partly_corrupt(tmp_path_factory):
    """An image folder with one undecodable and one truncated file, trained once: (folder, run, stdout, stderr)."""
    root = write_image_folder(tmp_path_factory.mktemp("corrupt") / "pets", {"cat": 10, "dog": 10})
    (root / "cat" / "notes.png").write_text("not an image at all")
    full = (root / "dog" / "0.png").read_bytes()
    (root / "dog" / "half.png").write_bytes(full[: len(full) // 3])
    out = tmp_path_factory.mktemp("corrupt-run") / "run"
    rc, stdout, stderr = run_cli(train(root, out))
    assert rc == 0, stdout + stderr
    return root, out, stdout, stderr


@pytest.fixture(scope="module")
def text_with_blanks(tiny_bert_dir, tmp_path_factory):
    """A CSV with two empty-text rows, trained once: (csv, run, stdout, stderr)."""
    path = write_text_csv(tmp_path_factory.mktemp("blanks") / "reviews.csv",
                          extra_rows=[["", "pos"], ["   ", "neg"]])
    out = tmp_path_factory.mktemp("blanks-run") / "run"
    rc, stdout, stderr = run_cli(["train", path, "--model", tiny_bert_dir, "--strategy", "full", *FAST, "-q",
                                  "--out", out])
    assert rc == 0, stdout + stderr
    return path, out, stdout, stderr


# --------------------------------------------------------------------------------------------- data


def test_missing_path(tmp_path, capsys):
    out = tmp_path / "run"
    line = assert_refused(main(train(tmp_path / "nope", out)), capsys.readouterr().err, out)
    assert "does not exist" in line and "nope" in line
    assert not out.exists()


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "run"
    line = assert_refused(main(train(tmp_path / "empty", out)), capsys.readouterr().err, out)
    assert "no images found" in line
    assert not out.exists()


def test_one_class_only(tmp_path, capsys):
    root = write_image_folder(tmp_path / "one", {"cat": 6})
    out = tmp_path / "run"
    line = assert_refused(main(train(root, out)), capsys.readouterr().err, out)
    assert "only one class" in line and "'cat'" in line and "at least 2 classes" in line


def test_class_with_a_single_image(tmp_path, capsys):
    root = write_image_folder(tmp_path / "few", {"cat": 6, "dog": 1})
    out = tmp_path / "run"
    line = assert_refused(main(train(root, out)), capsys.readouterr().err, out)
    assert "class 'dog' has only 1 example" in line and "at least 2" in line


def test_corrupt_images_are_skipped_with_a_warning(partly_corrupt):
    _, run, _, stderr = partly_corrupt
    assert "Traceback" not in stderr
    warnings = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("warning:")
    assert "skipped 2 unreadable images" in warnings[0]
    assert "cat/notes.png" in warnings[0] and "dog/half.png" in warnings[0]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["n_train"] + summary["n_val"] + summary["n_test"] == 20


def test_every_command_that_reads_data_names_what_it_skipped(partly_corrupt, capsys):
    """train warned; evaluate on other data, advise and --print-config read the same folder silently."""
    root, run, _, _ = partly_corrupt
    for argv in (["evaluate", str(run), str(root)], ["advise", str(root), "--rank-seconds", "0"],
                 ["train", str(root), *TINY_IMAGE, "--print-config"]):
        assert main(argv) == 0
        err = capsys.readouterr().err
        warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
        assert len(warnings) == 1 and "skipped 2 unreadable images" in warnings[0], (argv, err)


def test_all_images_corrupt(tmp_path, capsys):
    for cls in ("a", "b"):
        (tmp_path / "bad" / cls).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "bad" / cls / f"{i}.jpg").write_bytes(b"\xff\xd8\xff garbage")
    out = tmp_path / "run"
    line = assert_refused(main(train(tmp_path / "bad", out)), capsys.readouterr().err, out)
    assert "none of the 6 images" in line and "could be read" in line
    assert not out.exists()


def test_csv_without_the_named_column(tmp_path, tiny_bert_dir, capsys):
    path = write_text_csv(tmp_path / "t.csv")
    out = tmp_path / "run"
    rc = main(["train", str(path), "--model", str(tiny_bert_dir), *FAST, "--text-col", "nope", "--out", str(out)])
    line = assert_refused(rc, capsys.readouterr().err, out)
    assert "column 'nope' not found" in line and "text, label" in line and "--text-col" in line


def test_empty_text_rows_are_dropped_with_a_warning(text_with_blanks):
    _, run, _, stderr = text_with_blanks
    warnings = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("warning:") and "Traceback" not in stderr
    assert "dropped 2 rows with empty text" in warnings[0] and "lines 38, 39" in warnings[0]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["n_train"] + summary["n_val"] + summary["n_test"] == 36


def test_labels_in_test_not_seen_in_train(text_with_blanks, tmp_path, capsys):
    _, run, _, _ = text_with_blanks
    other = tmp_path / "other.csv"
    other.write_text("text,label\nloved it,pos\nmeh,neutral\nhated it,neg\n", encoding="utf-8")
    line = assert_refused(main(["evaluate", str(run), str(other)]), capsys.readouterr().err)
    assert "not seen in train: neutral" in line and "neg, pos" in line


def test_text_model_on_images_and_image_model_on_text(tmp_path, tiny_bert_dir, capsys):
    images = write_image_folder(tmp_path / "imgs", {"cat": 4, "dog": 4})
    texts = write_text_csv(tmp_path / "t.csv")
    cases = [
        (["train", images, "--model", tiny_bert_dir], "is a text model", "holds image"),
        (["train", images, "--model", "minilm-l6"], "is a text model", "holds image"),
        (["train", texts, *TINY_IMAGE], "is an image model", "holds text"),
    ]
    for k, (args, says, holds) in enumerate(cases):
        out = tmp_path / f"run{k}"
        line = assert_refused(main([str(a) for a in args] + [*FAST, "--out", str(out)]), capsys.readouterr().err,
                              out)
        assert says in line and holds in line, line
        assert not out.exists()
    # advise: the same line (it raised KeyError); an offline model is refused before the data profile prints,
    # one from a folder once it is built.
    for args, says, early in ((["advise", "digits", "-m", "minilm-l6"], "is a text model", True),
                              (["advise", texts, "-m", "efficientnet_lite0"], "is an image model", True),
                              (["advise", images, "-m", tiny_bert_dir], "is a text model", False)):
        rc = main([str(a) for a in args])
        captured = capsys.readouterr()
        assert says in assert_refused(rc, captured.err) and (captured.out == "") == early


# -------------------------------------------------------------------------------------- names and LRs


def test_unknown_model_lists_close_matches(tmp_path, capsys):
    images = write_image_folder(tmp_path / "imgs", {"cat": 4, "dog": 4})
    for name, suggestion in (("efficientnet_lit0", "efficientnet_lite0"),
                             ("timm/efficientnet_lit0", "timm/efficientnet_lite0")):
        out = tmp_path / "run"
        rc = main(["train", str(images), "--model", name, *FAST, "--out", str(out)])
        line = assert_refused(rc, capsys.readouterr().err, out)
        assert "unknown" in line and name in line and suggestion in line and "internet" not in line
        assert not out.exists()
    rc = main(["train", str(images), "--model", "./no-such-folder", *FAST, "--out", str(out)])
    assert "does not exist" in assert_refused(rc, capsys.readouterr().err, out)


def test_unknown_strategy_suggests_the_right_one(tmp_path, capsys):
    images = write_image_folder(tmp_path / "imgs", {"cat": 4, "dog": 4})
    out = tmp_path / "run"
    rc = main(train(images, out, "--strategy", "two_stag"))
    line = assert_refused(rc, capsys.readouterr().err, out)
    assert "unknown strategy 'two_stag'" in line and "two-stage" in line
    assert not out.exists()


NAN_LR = ["--strategy", "full", "--epochs", "4", "--set", "optim.name=sgd", "--set", "optim.lr=10",
          "--set", "optim.grad_clip=0", "--set", "optim.warmup=0"]


def test_nan_loss_stops_names_an_lr_and_keeps_the_last_good_weights(tmp_path, capsys):
    from safetensors.torch import load_file

    images = write_image_folder(tmp_path / "imgs", {"cat": 10, "dog": 10})
    out = tmp_path / "run"
    line = assert_refused(main(train(images, out, *NAN_LR)), capsys.readouterr().err, out)
    assert "NaN" in line and re.search(r"--set optim\.lr=\S+", line), line
    assert not (out / "model.safetensors").exists()
    best = load_file(out / "checkpoint" / "best.safetensors")
    assert all(bool(np.isfinite(t.float().numpy()).all()) for t in best.values())
    assert json.loads((out / "status.json").read_text())["status"] == "failed"

    # predict/evaluate on that run dir: say why it failed, not "re-run the same command" (it would fail again)
    line = assert_refused(main(["predict", str(out), str(images)]), capsys.readouterr().err)
    assert "training failed" in line and "NaN" in line


def test_nan_suggestion_is_below_the_configured_lr(tmp_path, capsys):
    images = write_image_folder(tmp_path / "imgs", {"cat": 10, "dog": 10})
    rc = main(train(images, tmp_path / "run", *NAN_LR, "--set", "optim.head_lr_mult=1000"))
    line = assert_refused(rc, capsys.readouterr().err)
    suggested = float(re.search(r"--set optim\.lr=(\S+)", line).group(1))
    assert suggested < 10


# ------------------------------------------------------------------------------------------- run dirs


def test_predict_on_a_run_without_weights(partly_corrupt, tmp_path, capsys):
    root, run, _, _ = partly_corrupt
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    (broken / "model.safetensors").unlink()
    line = assert_refused(main(["predict", str(broken), str(root / "cat" / "1.png")]), capsys.readouterr().err)
    assert "missing model.safetensors" in line and "--overwrite" in line


def test_predict_refuses_inputs_of_the_other_modality(partly_corrupt, text_with_blanks, capsys):
    root, image_run, _, _ = partly_corrupt
    csv_path, text_run, _, _ = text_with_blanks
    line = assert_refused(main(["predict", str(text_run), str(root / "cat" / "1.png")]), capsys.readouterr().err)
    assert "image file" in line and "text model" in line
    line = assert_refused(main(["predict", str(image_run), str(csv_path)]), capsys.readouterr().err)
    assert "image model" in line
    line = assert_refused(main(["predict", str(image_run), "no-such.png"]), capsys.readouterr().err)
    assert "no-such.png" in line
    for run in (image_run, text_run):  # an empty argument (a shell variable that was not set)
        line = assert_refused(main(["predict", str(run), "ok text", ""]), capsys.readouterr().err)
        assert "input 2 is empty" in line


def test_predict_on_a_text_run_does_not_classify_a_file_name(text_with_blanks, tmp_path, capsys):
    """A misspelt or unreadable path given to a text model is an error, not a 'text' to label."""
    csv_path, text_run, _, _ = text_with_blanks
    sheet = tmp_path / "reviews.xlsx"
    sheet.write_bytes(b"PK\x03\x04 not really a workbook")
    cases = {str(tmp_path / "reviewz.csv"): "no such file", str(tmp_path / "*.tsv"): "no file matches",
             str(sheet): "not .xlsx files"}
    for item, message in cases.items():
        line = assert_refused(main(["predict", str(text_run), item]), capsys.readouterr().err)
        assert item in line and message in line
    # Texts stay texts, whatever their punctuation; a real file is still read.
    assert main(["predict", str(text_run), "loved it, e.g. the ending.", "see notes.txt later",
                 str(csv_path), "--format", "csv"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith('"loved it, e.g. the ending."') and out[2].startswith("see notes.txt later")
    assert len(out) == 3 + len((csv_path).read_text().splitlines()) - 1 - 2  # header; rows minus 2 blank texts


@pytest.mark.parametrize("flags, says", [
    (["--fraction", "1.5"], ["--fraction:", "must be whole", "0.15"]),
    (["--fraction", "100000"], ["100000 training examples", "at most"]),
    (["--fraction", "nan"], ["--fraction:", "share in (0, 1]"]),
    (["--lr", "0"], ["--lr:", "optim.lr"]),
    (["--epochs", "-1"], ["--epochs:", "train.epochs"]),
    # issue 33: a count below the number of classes was raised to one per class in silence (10 examples)
    (["--fraction", "2"], ["data.fraction=2 asks for 2 training examples", "fewer than the 10 classes", "at least 10"]),
    # issue 33: these passed validation, then ended in "unexpected ValueError ... report it"
    (["--set", "data.val_size=0.6", "--set", "data.test_size=0.6"], ["data.val_size=0.6 + data.test_size=0.6",
                                                                    "nothing would be left to train on"]),
    (["--set", "data.split_seed=-5"], ["data.split_seed=-5 must be ≥ 0"]),
])
def test_a_bad_flag_is_named_as_typed(tmp_path, capsys, flags, says):
    out = tmp_path / "run"
    rc = main(["train", "digits", *TINY_IMAGE, "--strategy", "linear-probe", "-q", "--out", str(out), *flags])
    line = assert_refused(rc, capsys.readouterr().err, out)
    assert "unexpected" not in line and ("--set" not in line or "--set" in flags)
    assert all(s in line for s in says), line
    assert not out.exists()


def test_error_text_with_brackets_is_printed_verbatim(capsys):
    """rich markup in a message ("[/usr]", "[abc]") must neither crash the formatter nor vanish."""
    from ajuste.cli.main import _error

    _error("cannot read x [abc] y [/usr] z")
    assert one_error_line(capsys.readouterr().err) == "error: cannot read x [abc] y [/usr] z"


# ------------------------------------------------------------------------ a corrected command is not refused


def test_a_run_refused_before_its_first_epoch_does_not_block_the_corrected_command(tmp_path, capsys):
    """A setting checked against the backbone (unfreeze deeper than it is) fails before anything is written;
    a run directory that never saved an epoch gives way to the corrected command, one that did is kept."""
    images = write_image_folder(tmp_path / "imgs", {"cat": 6, "dog": 6})
    out = tmp_path / "run"
    rc = main(train(images, out, "--strategy", "partial", "--unfreeze", "1000"))
    assert "unfreeze=1000" in assert_refused(rc, capsys.readouterr().err, out)
    assert not out.exists()
    # The same situation left by an earlier version, or a Ctrl-C before the first checkpoint: run files only.
    out.mkdir()
    (out / "config.yaml").write_text("strategy:\n  name: partial\n  unfreeze: 1000\n")
    (out / "status.json").write_text('{"status": "running"}')
    assert main(train(images, out, "--strategy", "partial", "--unfreeze", "1")) == 0
    assert (out / "summary.json").is_file()
    capsys.readouterr()
    # With an epoch saved, another config is refused and the run is left as it was.
    (out / "summary.json").unlink()
    before = sorted(p.name for p in out.iterdir())
    rc = main(train(images, out, "--strategy", "partial", "--unfreeze", "2"))
    line = assert_refused(rc, capsys.readouterr().err, out)
    assert "different config" in line and "unfreeze" in line
    assert sorted(p.name for p in out.iterdir()) == before


def test_a_study_refused_before_its_first_cell_does_not_block_the_corrected_command(tmp_path, capsys):
    out = tmp_path / "study"
    cmd = ["compare", "digits", *TINY_IMAGE, "--strategies", "linear-probe", "--fractions", "0.1",
           "--no-similarity", "-j", "1", "-q", "--set", "train.epochs=1", "--out", str(out)]
    rc = main([*cmd, "--set", "train.foo=1"])
    assert "train.foo" in assert_refused(rc, capsys.readouterr().err)
    assert not out.exists()  # a bad --set is caught before the study directory is made
    # A stub from a study stopped before any cell (here: a model that does not exist) gives way too.
    rc = main([*cmd[:2], "--model", "efficientnet_lit0", *cmd[4:]])
    assert "efficientnet_lite0" in assert_refused(rc, capsys.readouterr().err)
    assert (out / "study.json").is_file() and not (out / "runs").exists()
    assert main(cmd) == 0, capsys.readouterr().err
    assert len((out / "results.jsonl").read_text().splitlines()) == 1
    # Once a cell has run, other settings are refused: the finished cells are kept.
    rc = main([*cmd, "--set", "train.epochs=2"])
    line = assert_refused(rc, capsys.readouterr().err)
    assert "other data or settings" in line
    assert len((out / "results.jsonl").read_text().splitlines()) == 1


def test_report_on_a_damaged_study_is_one_line(tmp_path, capsys):
    study = tmp_path / "study"
    assert main(["compare", "digits", *TINY_IMAGE, "--strategies", "linear-probe", "--fractions", "0.1",
                 "--no-similarity", "-j", "1", "-q", "--set", "train.epochs=1", "--out", str(study)]) == 0
    capsys.readouterr()

    def damaged(name: str, damage) -> Path:
        copy = tmp_path / name
        shutil.copytree(study, copy)
        damage(copy)
        return copy

    for name, text in (("garbled", "garbage"), ("emptied", "{}")):
        copy = damaged(name, lambda d: (d / "study.json").write_text(text))
        line = assert_refused(main(["report", str(copy)]), capsys.readouterr().err)
        assert "study.json is damaged" in line and "--out" in line
        line = assert_refused(main(["compare", "digits", "--out", str(copy)]), capsys.readouterr().err)
        assert "study.json is damaged" in line
    no_runs = damaged("no-runs", lambda d: shutil.rmtree(d / "runs"))
    line = assert_refused(main(["report", str(no_runs)]), capsys.readouterr().err)
    assert "missing" in line and "linear-probe-f0.1-s0" in line
    # A garbled (non-UTF-8) line in results.jsonl is skipped like a torn one; the good lines still report.
    with open(study / "results.jsonl", "ab") as fh:
        fh.write(b'{"cell": "\xff\xfe"}\n')
    assert main(["report", str(study)]) == 0, capsys.readouterr().err
    assert "linear-probe" in capsys.readouterr().out


def test_a_config_file_that_is_not_utf8_or_not_a_file(tmp_path, capsys):
    binary = tmp_path / "cfg.yaml"
    binary.write_bytes(b"train:\n  epochs: \xff\xfe\n")
    line = assert_refused(main(["train", "digits", "-c", str(binary), "-q", "--out", str(tmp_path / "r")]),
                          capsys.readouterr().err)
    assert "not UTF-8" in line and str(binary) in line
    line = assert_refused(main(["train", "digits", "-c", str(tmp_path), "-q", "--out", str(tmp_path / "r")]),
                          capsys.readouterr().err)
    assert "is a directory" in line


def test_predict_checks_its_output_before_predicting(partly_corrupt, capsys, monkeypatch):
    import ajuste.training.run_eval as run_eval

    root, run, _, _ = partly_corrupt
    calls = []
    monkeypatch.setattr(run_eval, "predict_inputs", lambda *a, **k: calls.append(a) or [])
    image = root / "cat" / "1.png"
    line = assert_refused(main(["predict", str(run), str(image), "--output", str(image / "p.csv")]),
                          capsys.readouterr().err)
    assert "is a file, not a directory" in line
    line = assert_refused(main(["predict", str(run), str(image), "--format", "jsonl", "--output", "p.csv"]),
                          capsys.readouterr().err)
    assert "--format jsonl but --output p.csv is a .csv file" in line
    if Path("/proc/self").is_dir():  # a place no user can create files in, root included
        line = assert_refused(main(["predict", str(run), str(image), "--output", "/proc/ajuste-preds.csv"]),
                              capsys.readouterr().err)
        assert "cannot write there" in line
    assert calls == []  # refused before any prediction ran


def test_a_run_command_given_the_wrong_thing_says_what_it_is(partly_corrupt, text_with_blanks, tmp_path, capsys):
    root, image_run, _, _ = partly_corrupt
    csv_path, text_run, _, _ = text_with_blanks
    # Other data of the other modality: the modality is the problem, not its labels.
    line = assert_refused(main(["evaluate", str(image_run), str(csv_path)]), capsys.readouterr().err)
    assert "holds text data but the model is an image model" in line
    line = assert_refused(main(["evaluate", str(text_run), str(root)]), capsys.readouterr().err)
    assert "holds image data but the model is a text model" in line
    # Columns of a table where they mean nothing: said, not ignored.
    line = assert_refused(main(["evaluate", str(image_run), str(root), "--text-col", "msg"]), capsys.readouterr().err)
    assert "--text-col is for a table of texts" in line and "image model" in line
    line = assert_refused(main(["evaluate", str(text_run), "--label-col", "y"]), capsys.readouterr().err)
    assert "--label-col is for DATA, and none was given" in line
    # A study or a search where a run is expected: point at what to use instead.
    study, search = tmp_path / "study", tmp_path / "search"
    for d, marker in ((study, "study.json"), (search, "tune.json")):
        d.mkdir()
        (d / marker).write_text("{}")
    for command in (["evaluate"], ["predict"], ["export", "--out", str(tmp_path / "x")]):
        line = assert_refused(main([command[0], str(study), *([str(root)] if command[0] == "predict" else []),
                                    *command[1:]]), capsys.readouterr().err)
        assert "study of `ajuste compare`" in line and str(study / "best_model") in line
        line = assert_refused(main([command[0], str(search), *([str(root)] if command[0] == "predict" else []),
                                    *command[1:]]), capsys.readouterr().err)
        assert "ajuste train --from-study" in line
    line = assert_refused(main(["evaluate", str(csv_path)]), capsys.readouterr().err)
    assert "is a file" in line
    # ...and the other way round: a run, a study or a search given as data
    for d, what in ((image_run, "a training run"), (study, "a study"), (search, "a search")):
        line = assert_refused(main(["train", str(d), "-q", "--out", str(tmp_path / "r")]), capsys.readouterr().err)
        assert f"is {what}" in line and "not a data set" in line


@pytest.mark.parametrize("argv, says", [
    (["train", "digits", "--fraction", "abc"], "invalid value for '--fraction'"),
    (["export", "somewhere"], "missing option '--out'"),
    (["trian"], "no such command 'trian'"),
    (["compare", "--seeds", "x"], "invalid value for '--seeds'"),
])
def test_a_usage_error_is_one_line_with_the_help_to_read(capsys, argv, says):
    rc = main(argv)
    line = assert_refused(rc, capsys.readouterr().err)
    assert rc == 2 and says in line and f"see `ajuste{' ' + argv[0] if argv[0] != 'trian' else ''} --help`" in line


def test_compare_with_a_negative_worker_count_is_refused(tmp_path, capsys):
    out = tmp_path / "study"
    line = assert_refused(main(["compare", "digits", "-j", "-1", "--out", str(out)]), capsys.readouterr().err)
    assert "--workers -1" in line and not out.exists()


def test_missing_directories_are_called_missing(tmp_path, capsys):
    gone = tmp_path / "gone"
    line = assert_refused(main(["report", str(gone)]), capsys.readouterr().err)
    assert f"{gone} does not exist" in line
    line = assert_refused(main(["train", "--from-study", str(gone), "-q"]), capsys.readouterr().err)
    assert f"--from-study {gone} does not exist" in line
    line = assert_refused(main(["train", "digits", "--set", "optim=5", "-q"]), capsys.readouterr().err)
    assert "section optim must be a mapping" in line and "--set optim.name=" in line
