"""Issue 33, item 7: one skip policy for bad inputs in train, evaluate and predict.

An unreadable image, a malformed JSONL line or a row without a text/label is skipped with ONE warning per kind
that counts them and names the first few; ``strict`` (``--strict``, ``data.strict``) fails on the first instead,
in one line naming the file (and line). A source with nothing usable is an error either way.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ajuste.cli.main import main
from ajuste.data.sources import load_data, load_texts
from ajuste.errors import DataError

TINY_IMAGE = ["--model", "timm/test_efficientnet", "--set", "model.pretrained=false", "--set", "data.image_size=32"]
FAST = ["-s", "linear-probe", "--epochs", "1", "--set", "train.min_steps=0"]


# --------------------------------------------------------------------------------------------- helpers


def write_images(root: Path, n: int = 6) -> Path:
    """root/cat/<i>.png (noisy red) and root/dog/<i>.png (noisy blue)."""
    rng = np.random.default_rng(0)
    for cls, colour in (("cat", (200, 40, 40)), ("dog", (40, 40, 200))):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            px = (np.array(colour) + rng.integers(-30, 30, (40, 40, 3))).clip(0, 255).astype(np.uint8)
            Image.fromarray(px).save(root / cls / f"{i}.png")
    return root


def truncated_jpeg(path: Path) -> Path:
    """A JPEG cut to 2/5 of its bytes: PIL opens it, decoding fails ("truncated file")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    noise = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)  # solid colours compress too well
    Image.fromarray(noise).save(buf, format="JPEG", quality=95)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 5])
    return path


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(ln + "\n" for ln in lines), encoding="utf-8")
    return path


GOOD = [json.dumps({"text": f"{lab} {i}", "label": lab}) for i in range(3) for lab in ("a", "b")]


def run_cli(args: list) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def stderr_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    return [ln for ln in err.splitlines() if ln.strip()]


def one_error_line(err: str) -> str:
    lines = stderr_lines(err)
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


# ------------------------------------------------------------------------------------------ load_data


def test_malformed_jsonl_lines_are_skipped_with_one_counting_warning(tmp_path):
    # lines 3 and 6 are bad: invalid JSON and a JSON array
    lines = GOOD[:2] + ['{"text": oops}'] + GOOD[2:4] + ["[1, 2]"] + GOOD[4:]
    d = load_data(write_jsonl(tmp_path / "d.jsonl", lines))
    assert d.inputs == [json.loads(g)["text"] for g in GOOD]  # every good row, in order
    assert [d.classes[k] for k in d.labels] == ["a", "b"] * 3
    assert len(d.warnings) == 1, d.warnings
    w = d.warnings[0]
    assert w.startswith("skipped 2 malformed lines in ") and "d.jsonl: lines 3, 6 " in w, w
    assert "(line 3 is not valid JSON" in w and w.endswith("write one JSON object per line"), w


def test_malformed_jsonl_strict_fails_on_the_first_bad_line(tmp_path):
    lines = GOOD[:2] + ["[1, 2]"] + GOOD[2:4] + ['{"text": oops}'] + GOOD[4:]
    f = write_jsonl(tmp_path / "d.jsonl", lines)
    with pytest.raises(DataError, match=r"^line 3 of .*d\.jsonl is a JSON array, not an object; write one \{\.\.\.\} "
                                         r"per line$"):
        load_data(f, strict=True)
    deep = write_jsonl(tmp_path / "deep.jsonl", GOOD + ['{"text": ' + "[" * 100_000])
    with pytest.raises(DataError, match=r"line 7 of .*deep\.jsonl nests JSON arrays/objects too deeply"):
        load_data(deep, strict=True)
    assert len(load_data(deep).inputs) == 6  # without strict the deep line is skipped


def test_all_bad_jsonl_is_still_an_error(tmp_path):
    f = write_jsonl(tmp_path / "bad.jsonl", ["oops", "[1]", '"a string"'])
    with pytest.raises(DataError, match=r"none of the 3 lines of .*bad\.jsonl holds a JSON object \(line 1 is not "
                                         r"valid JSON"):
        load_data(f)
    one = write_jsonl(tmp_path / "one.jsonl", ["oops"])
    with pytest.raises(DataError, match=r"^line 1 of .*one\.jsonl is not valid JSON"):
        load_data(one)


def test_an_error_after_skipping_says_what_was_skipped(tmp_path):
    """The skip warning is never shown when loading then fails: the error carries it."""
    f = write_jsonl(tmp_path / "d.jsonl", [GOOD[0], GOOD[2], "oops", "[1]", "{]"])  # left: only class 'a'
    with pytest.raises(DataError) as info:
        load_data(f)
    msg = str(info.value)
    assert msg.startswith("only one class ('a')"), msg
    assert "(skipped 3 malformed lines: line 3 of d.jsonl is not valid JSON" in msg and "also lines 4, 5)" in msg


def test_rows_without_label_strict(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("text,label\na0,a\nb0,b\nno label,\na1,a\nb1,b\n", encoding="utf-8")
    d = load_data(f)
    assert d.inputs == ["a0", "b0", "a1", "b1"]
    assert d.warnings == [f"dropped 1 rows with no label ('label') in {f}: lines 4"]
    with pytest.raises(DataError, match=r"^line 4 of .*t\.csv has no label \('label'\); fill it in or remove the row$"):
        load_data(f, strict=True)


def test_jsonl_split_folder_skips_per_file(tmp_path):
    (tmp_path / "ds").mkdir()
    write_jsonl(tmp_path / "ds" / "train.jsonl", GOOD + ["oops"])
    write_jsonl(tmp_path / "ds" / "test.jsonl", ["[]"] + GOOD[:4])
    d = load_data(tmp_path / "ds")
    assert len(d.splits["train"]) == 6 and len(d.splits["test"]) == 4
    assert len(d.warnings) == 2 and "train.jsonl: line 7 " in d.warnings[0] and "test.jsonl: line 1 " in d.warnings[1]
    with pytest.raises(DataError, match=r"^line 7 of .*train\.jsonl is not valid JSON"):
        load_data(tmp_path / "ds", strict=True)


def test_image_folder_strict_names_the_unreadable_file(tmp_path):
    root = write_images(tmp_path / "imgs", n=3)
    truncated_jpeg(root / "dog" / "trunc.jpg")
    d = load_data(root)
    assert len(d) == 6 and len(d.warnings) == 1 and "skipped 1 unreadable images" in d.warnings[0]
    with pytest.raises(DataError, match=r"^.*imgs/dog/trunc\.jpg cannot be read \(truncated file\); replace or "
                                         r"remove it$"):
        load_data(root, strict=True)


def test_load_texts_for_predict_warns_once_or_fails_strictly(tmp_path):
    f = write_jsonl(tmp_path / "new.jsonl", ['{"text": "one"}', "oops", '{"text": "two"}', "7"])
    notes: list[str] = []
    texts, lines = load_texts(f, warn=notes.append)
    assert texts == ["one", "two"] and lines == [1, 3]
    assert len(notes) == 1 and notes[0].startswith("skipped 2 malformed lines in ") and "lines 2, 4 " in notes[0]
    with pytest.raises(DataError, match=r"^line 2 of .*new\.jsonl is not valid JSON"):
        load_texts(f, strict=True, warn=notes.append)


def test_predict_text_inputs_follow_the_same_rule(tmp_path):
    from ajuste.training.run_eval import _expand_text_inputs

    f = write_jsonl(tmp_path / "new.jsonl", ['{"text": "one"}', "{oops", '{"text": "two"}'])
    notes: list[str] = []
    names, texts = _expand_text_inputs([str(f)], None, strict=False, warn=notes.append)
    assert names == ["new.jsonl:1", "new.jsonl:3"] and texts == ["one", "two"]
    assert len(notes) == 1 and "skipped 1 malformed line in " in notes[0] and "new.jsonl: line 2 " in notes[0]
    with pytest.raises(DataError, match=r"line 2 of .*new\.jsonl is not valid JSON"):
        _expand_text_inputs([str(f)], None, strict=True, warn=notes.append)


def test_strict_is_a_config_field():
    from ajuste.config import RunConfig, describe_fields, load_config

    assert RunConfig().data.strict is False
    assert load_config(None, ["data.strict=true"]).data.strict is True
    assert any(name == "data.strict" and help_text for name, help_text, _ in describe_fields(RunConfig))


# --------------------------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """A tiny linear-probe run trained on a folder that holds one truncated JPEG: (run dir, data folder, stderr)."""
    base = tmp_path_factory.mktemp("skip-policy")
    data = write_images(base / "shapes", n=8)
    truncated_jpeg(data / "cat" / "trunc.jpg")
    out = base / "run"
    rc, stdout, stderr = run_cli(["train", data, *TINY_IMAGE, *FAST, "--out", out, "-q"])
    assert rc == 0, stdout + stderr
    return out, data, stderr


def test_train_skips_with_a_warning_and_strict_fails(image_run):
    _, data, stderr = image_run
    warnings = [ln for ln in stderr_lines(stderr) if ln.startswith("warning:")]
    assert len(warnings) == 1 and "skipped 1 unreadable images in " in warnings[0], stderr
    assert "cat/trunc.jpg (truncated file)" in warnings[0]

    rc, _, err = run_cli(["train", data, *TINY_IMAGE, "--strict", "--print-config"])
    assert rc == 2
    assert one_error_line(err).endswith("cat/trunc.jpg cannot be read (truncated file); replace or remove it")
    rc, _, err = run_cli(["train", data, *TINY_IMAGE, "--set", "data.strict=true", "--print-config"])
    assert rc == 2 and "trunc.jpg cannot be read" in one_error_line(err)


def test_train_print_config_records_strict(tmp_path):
    import yaml

    folder = write_images(tmp_path / "ok", n=3)
    rc, out, err = run_cli(["train", folder, *TINY_IMAGE, "--strict", "--print-config"])
    assert rc == 0, err
    assert yaml.safe_load(out)["data"]["strict"] is True
    rc, out, err = run_cli(["train", folder, *TINY_IMAGE, "--print-config"])
    assert rc == 0 and yaml.safe_load(out)["data"]["strict"] is False


def test_predict_skips_unreadable_images(image_run, tmp_path):
    run, _, _ = image_run
    shots = write_images(tmp_path / "shots", n=2)
    bad = truncated_jpeg(shots / "dog" / "broken.jpg")
    (shots / "cat" / "empty.png").write_bytes(b"")
    rc, out, err = run_cli(["predict", run, shots, "--format", "jsonl"])
    assert rc == 0, err
    rows = [json.loads(ln) for ln in out.splitlines()]
    assert sorted(Path(r["input"]).name for r in rows) == ["0.png", "0.png", "1.png", "1.png"]  # no skipped rows
    lines = stderr_lines(err)
    assert len(lines) == 1 and lines[0].startswith("warning: skipped 2 unreadable images of 6: "), err
    assert f"{bad} (truncated file)" in lines[0] and "empty.png (empty file)" in lines[0]

    rc, out, err = run_cli(["predict", run, shots, "--format", "jsonl", "--strict"])
    assert rc == 2 and out == ""
    line = one_error_line(err)
    assert "empty.png cannot be read (empty file); replace or remove it" in line  # the first, in path order


def test_predict_all_unreadable_is_one_error(image_run, tmp_path):
    run, _, _ = image_run
    a = truncated_jpeg(tmp_path / "a.jpg")
    b = tmp_path / "b.png"
    b.write_text("not a picture")
    rc, out, err = run_cli(["predict", run, a, b])
    assert rc == 2 and out == ""
    assert "none of the 2 images could be read (e.g. " in one_error_line(err)
    rc, _, err = run_cli(["predict", run, b])
    assert rc == 2 and one_error_line(err).endswith("b.png cannot be read (not an image PIL can read); replace or "
                                                    "remove it")


def test_predict_output_file_has_no_rows_for_skipped_inputs(image_run, tmp_path):
    run, _, _ = image_run
    shots = write_images(tmp_path / "shots", n=1)
    truncated_jpeg(shots / "cat" / "broken.jpg")
    preds = tmp_path / "preds.csv"
    rc, out, err = run_cli(["predict", run, shots, "--output", preds])
    assert rc == 0, err
    rows = preds.read_text().splitlines()
    assert rows[0] == "input,label,probability" and len(rows) == 3 and "broken" not in preds.read_text()
    assert "wrote 2 predictions" in out


def test_evaluate_honours_strict(image_run, tmp_path):
    run, data, _ = image_run
    # the run's own test split, re-read from a source that holds a truncated image
    rc, out, err = run_cli(["evaluate", run, "--json"])
    assert rc == 0, err
    assert json.loads(out)["n"] > 0
    lines = stderr_lines(err)
    assert len(lines) == 1 and "skipped 1 unreadable images" in lines[0], err
    rc, _, err = run_cli(["evaluate", run, "--strict"])
    assert rc == 2 and "trunc.jpg cannot be read (truncated file)" in one_error_line(err)

    # other labelled data
    other = write_images(tmp_path / "other", n=3)
    truncated_jpeg(other / "dog" / "x.jpg")
    rc, out, err = run_cli(["evaluate", run, other, "--json"])
    assert rc == 0 and json.loads(out)["n"] == 6, err
    assert len(stderr_lines(err)) == 1
    rc, _, err = run_cli(["evaluate", run, other, "--json", "--strict"])
    assert rc == 2 and one_error_line(err).endswith("other/dog/x.jpg cannot be read (truncated file); replace or "
                                                    "remove it")
