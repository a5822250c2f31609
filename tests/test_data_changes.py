"""A run knows its data by content (issue 33, item 2): a file edited in place, same length, used to give
`evaluate` training rows as "test" rows in silence."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ajuste.data import fingerprint
from ajuste.data.sources import load_data
from test_cli import FAST, one_error_line, run_cli, write_text_csv


@pytest.fixture(scope="module")
def text_run(tiny_bert_dir, tmp_path_factory):
    """A finished run on a CSV of 36 texts: (csv, run dir, its evaluate --json)."""
    root = tmp_path_factory.mktemp("changes")
    csv_path = write_text_csv(root / "reviews.csv")
    out = root / "run"
    rc, stdout, err = run_cli(["train", csv_path, "--model", tiny_bert_dir, "-s", "linear-probe", *FAST, "-q",
                               "--out", out])
    assert rc == 0, stdout + err
    rc, stdout, err = run_cli(["evaluate", out, "--json"])
    assert rc == 0, err
    return csv_path, out, json.loads(stdout)


def _lines(path):
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def test_the_run_stores_each_splits_examples_by_content(text_run):
    csv_path, out, _ = text_run
    rec = json.loads((out / "fingerprint.json").read_text())
    splits = json.loads((out / "splits.json").read_text())
    assert rec["examples"] == 36 and len(rec["hashes"]) == 36
    assert {k: len(v) for k, v in rec["splits"].items()} == {k: len(v) for k, v in splits.items()}
    data = load_data(csv_path)
    hashes = fingerprint.example_hashes(data)
    assert sorted(hashes[i] for i in splits["test"]) == rec["splits"]["test"]


def test_reversed_rows_are_the_same_data_and_evaluate_scores_the_same_test_examples(text_run, tmp_path):
    csv_path, out, before = text_run
    original = csv_path.read_bytes()
    header, *rows = _lines(csv_path)
    try:
        csv_path.write_text(header + "".join(reversed(rows)), encoding="utf-8")
        # the old way, by row number, would now read other texts as the test split
        saved = json.loads((out / "splits.json").read_text())["test"]
        was = load_data(_copy(original, tmp_path)).inputs
        now = load_data(csv_path).inputs
        assert [was[i] for i in saved] != [now[i] for i in saved]
        from ajuste.training.run_eval import _own_test_split

        located = _own_test_split(out, load_data(csv_path), csv_path)
        assert sorted(now[i] for i in located) == sorted(was[i] for i in saved)  # the same texts, found anew
        rc, stdout, err = run_cli(["evaluate", out, "--json"])
        assert rc == 0, err
        after = json.loads(stdout)
        assert after["accuracy"] == before["accuracy"] and after["confusion"] == before["confusion"]
    finally:
        csv_path.write_bytes(original)


def _copy(data: bytes, tmp_path):
    p = tmp_path / "original.csv"
    p.write_bytes(data)
    return p


def test_edited_rows_are_refused_in_one_line_that_says_what_changed(text_run):
    csv_path, out, _ = text_run
    original = csv_path.read_bytes()
    test_rows = set(json.loads((out / "splits.json").read_text())["test"])
    header, *rows = _lines(csv_path)
    k = min(test_rows)  # edit one test row, keep the length
    rows[k] = rows[k].replace(",", " (edited),", 1)
    try:
        csv_path.write_text(header + "".join(rows), encoding="utf-8")
        rc, _, err = run_cli(["evaluate", out])
        line = one_error_line(err)
        assert rc == 2
        assert "1 example added, 1 removed or edited, 1 of the" in line and "test examples is gone" in line, line
        # on purpose, other data is still scored
        rc, stdout, err = run_cli(["evaluate", out, csv_path, "--json"])
        assert rc == 0, err
        assert json.loads(stdout)["evaluated_on"] == str(csv_path)
    finally:
        csv_path.write_bytes(original)


def test_resuming_on_changed_data_is_refused(text_run, tiny_bert_dir, tmp_path):
    csv_path, out, _ = text_run
    data_copy = tmp_path / "reviews.csv"
    shutil.copy(csv_path, data_copy)
    run = tmp_path / "run"
    args = ["train", data_copy, "--model", tiny_bert_dir, "-s", "linear-probe", *FAST, "-q", "--out", run]
    assert run_cli(args)[0] == 0
    # make it look unfinished, as a killed run is, then change the data under it
    (run / "summary.json").unlink()
    (run / "checkpoint").mkdir(exist_ok=True)
    (run / "status.json").write_text('{"status": "interrupted"}')
    header, *rows = _lines(data_copy)
    data_copy.write_text(header + "".join(reversed(rows)), encoding="utf-8")
    rc, _, err = run_cli(args)
    line = one_error_line(err)
    assert rc == 2 and "same examples in another order" in line and "--overwrite" in line, line
    data_copy.write_text(header + "".join(rows[:-2]), encoding="utf-8")
    rc, _, err = run_cli(args)
    assert rc == 2 and "0 examples added, 2 removed or edited" in one_error_line(err)


def test_hashes_see_content_not_names_and_labels_count(tmp_path):
    from ajuste.data.sources import LabelledData

    a = LabelledData(modality="text", inputs=["x", "y"], labels=np.array([0, 1]), classes=["neg", "pos"])
    b = LabelledData(modality="text", inputs=["y", "x"], labels=np.array([1, 0]), classes=["neg", "pos"])
    c = LabelledData(modality="text", inputs=["x", "y"], labels=np.array([1, 1]), classes=["neg", "pos"])
    ha, hb, hc = (fingerprint.example_hashes(d) for d in (a, b, c))
    assert sorted(ha) == sorted(hb) and ha != hb  # order-independent digest, per-row hashes
    assert ha[0] != hc[0] and ha[1] == hc[1]  # a relabelled example is another example
    imgs = np.zeros((2, 8, 8), dtype=np.uint8)
    imgs[1, 0, 0] = 1
    d = LabelledData(modality="image", inputs=imgs, labels=np.array([0, 0]), classes=["a", "b"])
    assert len(set(fingerprint.example_hashes(d))) == 2


def test_a_search_remembers_its_data_and_from_study_refuses_changed_data(text_run, tiny_bert_dir, tmp_path):
    csv_path, _, _ = text_run
    data_copy = tmp_path / "reviews.csv"
    shutil.copy(csv_path, data_copy)
    search = tmp_path / "search"
    tune = ["tune", data_copy, "--model", tiny_bert_dir, "-s", "linear-probe", "--epochs", "1", "--trials", "1",
            "--sampler", "random", "--set", "train.min_steps=0", "--out", search]
    rc, stdout, err = run_cli(tune)
    assert rc == 0, stdout + err
    best = json.loads((search / "best.json").read_text())
    assert best["data_digest"] == fingerprint.data_digest(load_data(data_copy))
    retrain = ["train", "--from-study", search, "--epochs", "1", "-q"]
    header, *rows = _lines(data_copy)
    data_copy.write_text(header + "".join(reversed(rows)), encoding="utf-8")  # the same data: fine
    rc, _, err = run_cli([*retrain, "--out", tmp_path / "r1"])
    assert rc == 0, err
    data_copy.write_text(header + "".join(rows[1:]), encoding="utf-8")  # one example fewer: refused
    rc, _, err = run_cli([*retrain, "--out", tmp_path / "r2"])
    line = one_error_line(err)
    assert rc == 2 and "changed since the search" in line, line
    assert not (tmp_path / "r2").exists()
    rc, _, err = run_cli([*retrain, data_copy, "--out", tmp_path / "r3"])  # DATA named: on purpose
    assert rc == 0, err
    rc, _, err = run_cli([*tune[:-2], "--trials", "2", "--out", search])  # resuming the search on it
    line = one_error_line(err)
    assert rc == 2 and "was started on other data" in line, line


def test_a_study_resumed_on_edited_data_is_refused(text_run, tiny_bert_dir, tmp_path):
    """The row numbers of an edited row stay the same, so the study's split indices matched and its
    remaining cells would have trained on other data."""
    csv_path, _, _ = text_run
    data_copy = tmp_path / "reviews.csv"
    shutil.copy(csv_path, data_copy)
    out = tmp_path / "study"
    args = ["compare", data_copy, "--model", tiny_bert_dir, "--strategies", "linear-probe", "--fractions", "0.5",
            "--no-similarity", "-j", "1", "-q", "--set", "train.epochs=1", "--set", "train.min_steps=0",
            "--out", out]
    rc, stdout, err = run_cli(args)
    assert rc == 0, stdout + err
    assert (out / "fingerprint.json").is_file()
    header, *rows = _lines(data_copy)
    rows[3] = rows[3].replace(",", " (edited),", 1)
    data_copy.write_text(header + "".join(rows), encoding="utf-8")
    rc, _, err = run_cli([*args[:7], "0.5,1", *args[8:]])  # one more fraction: a cell left to run
    line = one_error_line(err)
    assert rc == 2 and "changed since the study in" in line and "1 example added, 1 removed or edited" in line
