"""load_data: every source type, every user-facing error, and the real data sets when they are present."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ajuste.data.sources import LabelledData, load_data
from ajuste.errors import DataError

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def _img(path: Path, size: int = 6, value: int = 128, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = fmt or {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".gif": "GIF"}[path.suffix.lower()]
    Image.new("RGB", (size, size), (value, 255 - value, 0)).save(path, format=fmt)
    return path


def _image_tree(root: Path, spec: dict[str, int], ext: str = ".png") -> Path:
    for cls, n in spec.items():
        for i in range(n):
            _img(root / cls / f"{cls}{i}{ext}", value=20 * i)
    return root


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def _need(name: str) -> Path:
    path = DATASETS / name
    if not path.exists():
        pytest.skip(f"{path} not present on this machine")
    return path


# ------------------------------------------------------------------------------------------------------ digits


def test_digits_builtin():
    d = load_data("digits")
    assert d.modality == "image"
    assert isinstance(d.inputs, np.ndarray) and d.inputs.shape == (1797, 8, 8) and d.inputs.dtype == np.uint8
    assert d.inputs.min() == 0 and d.inputs.max() == 255
    assert d.classes == [str(i) for i in range(10)]
    assert d.labels.dtype == np.int64 and d.labels.shape == (1797,)
    assert d.splits == {} and d.warnings == []
    assert len(d) == 1797 and "digits" in d.source


def test_digits_pixel_scaling_matches_sklearn():
    from sklearn.datasets import load_digits

    raw = load_digits().images
    d = load_data("digits")
    np.testing.assert_array_equal(d.inputs, np.rint(raw * 255 / 16).astype(np.uint8))


# ------------------------------------------------------------------------------------------------ image folders


def test_image_folder_flat(tmp_path):
    root = _image_tree(tmp_path / "pets", {"cat": 3, "dog": 2})
    _img(root / "dog" / "LOUD.JPG", fmt="JPEG")  # upper-case extension counts
    _img(root / "dog" / "x.jpeg")
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "dog" / ".DS_Store").write_bytes(b"\x00\x01")
    _img(root / "cat" / ".hidden.png")
    _img(root / ".thumbs" / "t.png")  # hidden folder: not a class
    d = load_data(root)
    assert d.modality == "image" and d.classes == ["cat", "dog"]
    assert len(d) == 7 and np.bincount(d.labels).tolist() == [3, 4]
    assert all(isinstance(p, str) and Path(p).is_absolute() and Path(p).exists() for p in d.inputs)
    assert not any(".hidden" in p or "notes" in p or ".thumbs" in p for p in d.inputs)
    assert d.splits == {} and d.warnings == []
    assert "pets/" in d.source and "2 classes" in d.source and "7 images" in d.source
    for path, y in zip(d.inputs, d.labels):
        assert Path(path).parent.name == d.classes[y]


def test_image_folder_with_splits(tmp_path):
    root = tmp_path / "ds"
    _image_tree(root / "train", {"a": 3, "b": 3, "c": 2})
    _image_tree(root / "validation", {"a": 1, "b": 2})  # "validation" is the val split; c absent is fine
    _image_tree(root / "test", {"a": 1, "c": 1})
    d = load_data(root)
    assert d.classes == ["a", "b", "c"]
    assert set(d.splits) == {"train", "val", "test"}
    assert [len(d.splits[k]) for k in ("train", "val", "test")] == [8, 3, 2]
    for key, folder in (("train", "train"), ("val", "validation"), ("test", "test")):
        assert all(f"/{folder}/" in d.inputs[i] for i in d.splits[key])
    every = np.concatenate(list(d.splits.values()))
    assert sorted(every.tolist()) == list(range(len(d)))


def test_image_folder_val_class_not_in_train(tmp_path):
    root = tmp_path / "ds"
    _image_tree(root / "train", {"a": 2, "b": 2})
    _image_tree(root / "val", {"a": 1, "wasp": 1})
    with pytest.raises(DataError, match=r"wasp.*not seen in train|not seen in train.*wasp"):
        load_data(root)


def test_image_folder_splits_without_train(tmp_path):
    root = tmp_path / "ds"
    _image_tree(root / "val", {"a": 2, "b": 2})
    _image_tree(root / "test", {"a": 2, "b": 2})
    with pytest.raises(DataError, match="no train/"):
        load_data(root)


def test_corrupt_images_are_skipped_with_warning(tmp_path):
    root = _image_tree(tmp_path / "ds", {"a": 3, "b": 3})
    (root / "a" / "broken.jpg").write_bytes(b"this is not a jpeg")
    good = (root / "b" / "b0.png").read_bytes()
    (root / "b" / "truncated.png").write_bytes(good[: len(good) // 2])  # opens, fails on decode
    d = load_data(root)
    assert len(d) == 6
    assert len(d.warnings) == 1
    w = d.warnings[0]
    assert "skipped 2 unreadable images" in w and "a/broken.jpg" in w and "b/truncated.png" in w
    assert not any("broken" in p or "truncated" in p for p in d.inputs)


def test_warning_lists_only_a_few_names(tmp_path):
    root = _image_tree(tmp_path / "ds", {"a": 2, "b": 2})
    for i in range(9):
        (root / "a" / f"bad{i}.png").write_bytes(b"junk")
    (w,) = load_data(root).warnings
    assert "skipped 9 unreadable images" in w and "(+4 more)" in w and "bad8" not in w


def test_all_images_corrupt_is_an_error(tmp_path):
    root = tmp_path / "ds"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            (root / cls / f"{i}.jpg").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"none of the 4 images in .*ds/ could be read"):
        load_data(root)


def test_decompression_bomb_counts_as_unreadable(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    for cls in ("a", "b"):
        for i in range(2):
            _img(root / cls / f"{i}.png", size=2)  # 4 pixels: fine
    _img(root / "a" / "bomb.png", size=8)  # 64 pixels > 2 x limit -> DecompressionBombError
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    d = load_data(root)
    assert len(d) == 4 and "a/bomb.png" in d.warnings[0]


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no images found in .*empty/"):
        load_data(tmp_path / "empty")


def test_class_folders_without_images(tmp_path):
    (tmp_path / "ds" / "a").mkdir(parents=True)
    (tmp_path / "ds" / "b").mkdir()
    (tmp_path / "ds" / "a" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no images found"):
        load_data(tmp_path / "ds")


def test_images_without_class_folders(tmp_path):
    for i in range(3):
        _img(tmp_path / "ds" / f"{i}.png")
    with pytest.raises(DataError, match=r"found 3 images directly in .*no class subfolders"):
        load_data(tmp_path / "ds")


def test_only_one_class_folder(tmp_path):
    root = _image_tree(tmp_path / "ds", {"ants": 4})
    with pytest.raises(DataError, match=r"only one class \('ants'\)"):
        load_data(root)


def test_class_with_one_image(tmp_path):
    root = _image_tree(tmp_path / "ds", {"ants": 3, "bees": 1})
    with pytest.raises(DataError, match=r"class 'bees' has only 1 example .*add images to .*ds/bees/ or remove that folder"):
        load_data(root)


def test_empty_class_folder(tmp_path):
    root = _image_tree(tmp_path / "ds", {"ants": 3, "bees": 3})
    (root / "wasps").mkdir()
    with pytest.raises(DataError, match="class 'wasps' has no examples"):
        load_data(root)


# -------------------------------------------------------------------------------------------------------- npz


def test_npz_x_y(tmp_path):
    x = np.arange(6 * 4 * 4, dtype=np.uint8).reshape(6, 4, 4)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 2, 0, 1, 2]))
    d = load_data(tmp_path / "d.npz")
    assert d.modality == "image" and d.inputs.shape == (6, 4, 4) and d.inputs.dtype == np.uint8
    assert d.classes == ["0", "1", "2"] and d.labels.tolist() == [0, 1, 2, 0, 1, 2] and d.splits == {}


def test_npz_images_labels_channel_squeeze_and_numeric_class_order(tmp_path):
    x = np.zeros((22, 5, 5, 1), np.uint8)
    y = np.repeat(np.arange(11), 2)  # 0..10: "10" must sort after "9"
    np.savez(tmp_path / "d.npz", images=x, labels=y)
    d = load_data(tmp_path / "d.npz")
    assert d.inputs.shape == (22, 5, 5)
    assert d.classes == [str(i) for i in range(11)]
    assert d.classes[d.labels[-1]] == "10"


def test_npz_rgb_and_string_labels(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((4, 3, 3, 3), np.uint8), y=np.array(["cat", "dog", "cat", "dog"]))
    d = load_data(tmp_path / "d.npz")
    assert d.inputs.shape == (4, 3, 3, 3) and d.classes == ["cat", "dog"]


def test_npz_medmnist_style(tmp_path):
    def part(n, v):
        return np.full((n, 4, 4), v, np.uint8), (np.arange(n) % 2).reshape(n, 1).astype(np.uint8)

    (trx, try_), (vx, vy), (tx, ty) = part(6, 1), part(4, 2), part(2, 3)
    np.savez(tmp_path / "m.npz", train_images=trx, train_labels=try_, val_images=vx, val_labels=vy,
             test_images=tx, test_labels=ty)
    d = load_data(tmp_path / "m.npz")
    assert len(d) == 12 and d.classes == ["0", "1"]
    assert {k: len(v) for k, v in d.splits.items()} == {"train": 6, "val": 4, "test": 2}
    assert (d.inputs[d.splits["val"]] == 2).all() and (d.inputs[d.splits["test"]] == 3).all()


def test_npz_float_images_are_scaled_with_warning(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.linspace(0, 1, 4 * 9).reshape(4, 3, 3), y=[0, 1, 0, 1])
    d = load_data(tmp_path / "d.npz")
    assert d.inputs.dtype == np.uint8 and d.inputs.max() == 255
    assert "scaled to uint8" in d.warnings[0]


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "keys.npz", a=np.zeros((2, 2, 2)), b=[0, 1])
    with pytest.raises(DataError, match=r"keys\.npz has arrays a, b; expected x/y"):
        load_data(tmp_path / "keys.npz")
    np.savez(tmp_path / "shape.npz", x=np.zeros((4, 3, 3, 4), np.uint8), y=[0, 1, 0, 1])
    with pytest.raises(DataError, match=r"'x' in .*shape\.npz has shape \(4, 3, 3, 4\)"):
        load_data(tmp_path / "shape.npz")
    np.savez(tmp_path / "n.npz", x=np.zeros((4, 3, 3), np.uint8), y=[0, 1, 0])
    with pytest.raises(DataError, match="3 labels for 4 images"):
        load_data(tmp_path / "n.npz")
    np.savez(tmp_path / "onehot.npz", x=np.zeros((2, 3, 3), np.uint8), y=np.eye(2))
    with pytest.raises(DataError, match="multi-label or one-hot"):
        load_data(tmp_path / "onehot.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"bad\.npz is not a \.npz \(zip\) archive"):
        load_data(tmp_path / "bad.npz")


# ------------------------------------------------------------------------------------------------ text tables


def test_csv_named_columns(tmp_path):
    f = _write(tmp_path / "d.csv", "id,Review,Label\n1,great film,pos\n2,awful,neg\n3,fine really,pos\n4,bad,neg\n")
    d = load_data(f)
    assert d.modality == "text" and d.inputs == ["great film", "awful", "fine really", "bad"]
    assert d.classes == ["neg", "pos"] and d.labels.tolist() == [1, 0, 1, 0]
    assert "'Review'" in d.source and "'Label'" in d.source and d.splits == {}


def test_csv_columns_by_statistics(tmp_path):
    rows = [f"{i},{'word ' * (5 + i % 3)},{'xy'[i % 2]}" for i in range(10)]
    f = _write(tmp_path / "d.csv", "n,words,kind\n" + "\n".join(rows) + "\n")
    d = load_data(f)  # 'words' is longest; 'kind' has few distinct values (n has 10 distinct in 10 rows)
    assert d.inputs[0].startswith("word") and d.classes == ["x", "y"]


def test_csv_bom_and_crlf(tmp_path):
    f = _write(tmp_path / "d.csv", "\ufefftext,label\r\nhello,a\r\nworld,b\r\nagain,a\r\nmore,b\r\n")
    d = load_data(f)
    assert d.inputs == ["hello", "world", "again", "more"] and d.classes == ["a", "b"]


def test_csv_quoted_newlines_and_line_numbers(tmp_path):
    text = (
        "text,label\n"
        '"first line\nsecond line, with comma",a\n'  # record on lines 2-3
        '"",b\n'  # line 4: empty text
        "ok,b\n"
        "fine,\n"  # line 6: no label
        "also ok,a\n"
        "NaN,b\n"  # line 8: NaN text
        "yes,b\n"
    )
    d = load_data(_write(tmp_path / "q.csv", text))
    assert d.inputs[0] == "first line\nsecond line, with comma"
    assert d.inputs == ["first line\nsecond line, with comma", "ok", "also ok", "yes"]
    text_w = next(w for w in d.warnings if "empty text" in w)
    label_w = next(w for w in d.warnings if "no label" in w)
    assert "dropped 2 rows" in text_w and "lines 4, 8" in text_w and "q.csv" in text_w
    assert "dropped 1 rows" in label_w and "lines 6" in label_w


def test_numeric_labels_sort_numerically(tmp_path):
    rows = "".join(f"t{i},{lab}\n" for i, lab in enumerate([10, 2, 10, 2, 1, 1.0]))
    d = load_data(_write(tmp_path / "d.csv", "text,label\n" + rows))
    assert d.classes == ["1", "2", "10"]  # "1.0" and "1" are the same class
    assert d.labels.tolist() == [2, 1, 2, 1, 0, 0]


def test_semicolon_csv(tmp_path):
    d = load_data(_write(tmp_path / "d.csv", "text;label\na b;x\nc d;y\ne f;x\ng h;y\n"))
    assert d.inputs[0] == "a b" and d.classes == ["x", "y"]


def test_tsv_literal_quotes(tmp_path):
    # SMS-style: a message that starts with a quote must not swallow the following rows
    text = 'Label\tSMS\nham\t"Pete can you ring me\nspam\tWIN now\nham\tok "fine"\nspam\t"FREE" entry\n'
    d = load_data(_write(tmp_path / "d.tsv", text))
    assert len(d) == 4 and d.inputs[0] == '"Pete can you ring me'


def test_tsv_with_csv_style_quoting(tmp_path):
    text = 'text\tlabel\n"has\ta tab"\ta\n"two\nlines"\tb\nplain\ta\nmore\tb\n'
    d = load_data(_write(tmp_path / "d.tsv", text))
    assert d.inputs[:2] == ["has\ta tab", "two\nlines"]


def test_extensionless_tab_file_is_tsv(tmp_path):
    f = _write(tmp_path / "Collection", "Label\tSMS\nham\thi there\nspam\twin cash\nham\tok\nspam\tfree\n")
    d = load_data(f)
    assert d.classes == ["ham", "spam"] and "TSV" in d.source


def test_jsonl(tmp_path):
    lines = [
        {"text": "one", "label": 1},
        {"text": "two", "label": 0},
        {"text": None, "label": 1},  # line 3: null text dropped
        {"text": "three", "label": 1},
        {"text": "four", "label": 0, "extra": True},
    ]
    f = _write(tmp_path / "d.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    d = load_data(f)
    assert d.inputs == ["one", "two", "three", "four"] and d.classes == ["0", "1"]
    assert d.labels.tolist() == [1, 0, 1, 0]
    assert "lines 3" in d.warnings[0]


def test_jsonl_bad_line(tmp_path):
    f = _write(tmp_path / "d.jsonl", '{"text": "a", "label": 0}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"line 2 of .*d\.jsonl is not valid JSON"):
        load_data(f)


def test_explicit_columns(tmp_path):
    f = _write(tmp_path / "d.csv", "title,body,topic\nt1,a long body,x\nt2,another body,y\nt3,b,x\nt4,c,y\n")
    d = load_data(f, text_col="title", label_col="topic")
    assert d.inputs == ["t1", "t2", "t3", "t4"]


def test_missing_named_column(tmp_path):
    f = _write(tmp_path / "d.csv", "text,label\na,x\nb,y\n")
    with pytest.raises(DataError, match=r"column 'sentence' not found in .*d\.csv; available columns: text, label; .*--text-col"):
        load_data(f, text_col="sentence")
    with pytest.raises(DataError, match=r"column 'cls' not found .*--label-col"):
        load_data(f, label_col="cls")


def test_ambiguous_text_column(tmp_path):
    rows = "".join(f"a rather long title {i},an even longer body text number {i},{'xy'[i % 2]}\n" for i in range(6))
    f = _write(tmp_path / "d.csv", "title,details,label\n" + rows)
    with pytest.raises(DataError, match=r"cannot tell which column .* holds the text .*available columns: title, details, label.*--text-col"):
        load_data(f)


def test_ambiguous_label_column(tmp_path):
    rows = "".join(f"some text {i},{'ab'[i % 2]},{'cd'[i % 2]}\n" for i in range(6))
    f = _write(tmp_path / "d.csv", "text,c1,c2\n" + rows)
    with pytest.raises(DataError, match=r"holds the label \(several candidates: c1, c2\).*--label-col"):
        load_data(f)


def test_headerless_file_is_detected(tmp_path):
    f = _write(tmp_path / "sms.tsv", "ham\tGo until jurong point, crazy.. Available only\nspam\tFree entry\nham\tok\n")
    with pytest.raises(DataError, match="seems to have no header line"):
        load_data(f)


def test_ragged_csv_row(tmp_path):
    f = _write(tmp_path / "d.csv", "text,label\nok,a\nhello, world,b\n")
    with pytest.raises(DataError, match=r"line 3 of .*d\.csv has 3 fields but the header has 2"):
        load_data(f)


def test_non_utf8_file(tmp_path):
    f = _write(tmp_path / "d.csv", "text,label\ncaf\u00e9 au lait,a\nb,b\n", encoding="cp1252")
    with pytest.raises(DataError, match=r"d\.csv is not valid UTF-8 \(byte 0xe9 on line 2\); re-save it as UTF-8"):
        load_data(f)


def test_utf16_with_bom(tmp_path):
    f = _write(tmp_path / "d.tsv", "text\tlabel\ncaf\u00e9\ta\nthé\tb\nx\ta\ny\tb\n", encoding="utf-16")
    assert load_data(f).inputs[0] == "caf\u00e9"


def test_text_only_one_class(tmp_path):
    f = _write(tmp_path / "d.csv", "text,label\na,x\nb,x\nc,x\n")
    with pytest.raises(DataError, match=r"only one class \('x'\) in .*d\.csv"):
        load_data(f, label_col="label")


def test_text_class_with_one_example(tmp_path):
    f = _write(tmp_path / "d.csv", "text,label\na,x\nb,x\nc,y\nd,y\ne,rare\n")
    with pytest.raises(DataError, match=r"class 'rare' has only 1 example in .*d\.csv \(column 'label'\)"):
        load_data(f)


def test_header_only(tmp_path):
    with pytest.raises(DataError, match="header but no rows"):
        load_data(_write(tmp_path / "d.csv", "text,label\n"))


def test_text_folder_with_splits(tmp_path):
    _write(tmp_path / "t" / "train.csv", "text,label\na,0\nb,1\nc,0\nd,1\n")
    _write(tmp_path / "t" / "dev.csv", "text,label\ne,0\nf,1\n")
    _write(tmp_path / "t" / "test.csv", "text,label\ng,1\n")
    _write(tmp_path / "t" / "notes.md", "ignored")
    d = load_data(tmp_path / "t")
    assert d.modality == "text" and d.inputs == list("abcdefg")
    assert {k: v.tolist() for k, v in d.splits.items()} == {"train": [0, 1, 2, 3], "val": [4, 5], "test": [6]}


def test_text_folder_jsonl(tmp_path):
    _write(tmp_path / "t" / "train.jsonl", "".join(json.dumps({"sentence": s, "y": s[0]}) + "\n" for s in ["aa", "ab", "ba", "bb"]))
    _write(tmp_path / "t" / "validation.jsonl", json.dumps({"sentence": "ac", "y": "a"}) + "\n")
    d = load_data(tmp_path / "t")
    assert d.classes == ["a", "b"] and set(d.splits) == {"train", "val"}


def test_text_folder_unseen_test_label(tmp_path):
    _write(tmp_path / "t" / "train.csv", "text,label\na,x\nb,y\nc,x\nd,y\n")
    _write(tmp_path / "t" / "test.csv", "text,label\ne,z\nf,x\n")
    with pytest.raises(DataError, match=r"labels in .*test\.csv not seen in train \(train\.csv\): z"):
        load_data(tmp_path / "t")


def test_text_folder_missing_column_in_test(tmp_path):
    _write(tmp_path / "t" / "train.csv", "text,label\na,x\nb,y\nc,x\nd,y\n")
    _write(tmp_path / "t" / "test.csv", "sentence,label\ne,x\n")
    with pytest.raises(DataError, match=r"column 'text' not found in .*test\.csv"):
        load_data(tmp_path / "t")


# ------------------------------------------------------------------------------------------- classes= mapping


def test_classes_mapping(tmp_path):
    f = _write(tmp_path / "new.csv", "text,label\na,spam\nb,spam\n")  # one class, one row: fine for evaluation
    d = load_data(f, classes=["ham", "spam"])
    assert d.classes == ["ham", "spam"] and d.labels.tolist() == [1, 1]


def test_classes_mapping_numeric(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 2, 2), np.uint8), y=[2, 0, 2])
    d = load_data(tmp_path / "d.npz", classes=["2", "1", "0"])  # the run's order, not sorted
    assert d.labels.tolist() == [0, 2, 0]


def test_classes_mapping_unseen_label(tmp_path):
    f = _write(tmp_path / "new.csv", "text,label\na,spam\nb,eggs\nc,ham\nd,bacon\n")
    with pytest.raises(DataError, match=r"labels in .*new\.csv .*not seen in train: bacon, eggs"):
        load_data(f, classes=["ham", "spam"])


def test_classes_mapping_image_folder(tmp_path):
    root = _image_tree(tmp_path / "ds", {"bees": 1})
    d = load_data(root, classes=["ants", "bees"])
    assert d.labels.tolist() == [1]


# ---------------------------------------------------------------------------------------------- path errors


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match=r"does not exist"):
        load_data(tmp_path / "nope.csv")


def test_unknown_bare_word_mentions_builtin():
    with pytest.raises(DataError, match=r"'mnist' is neither an existing path nor a built-in .*'digits'"):
        load_data("mnist")


def test_unknown_file_type(tmp_path):
    f = _write(tmp_path / "d.xlsx", "PK")
    with pytest.raises(DataError, match=r"'\.xlsx' files are not supported; supported sources are .*\.npz, \.csv, \.tsv or \.jsonl file"):
        load_data(f)
    g = _write(tmp_path / "README", "just words\n")
    with pytest.raises(DataError, match="no tab in its first line"):
        load_data(g)


def test_error_messages_are_one_line(tmp_path):
    cases = [
        lambda: load_data("mnist"),
        lambda: load_data(_write(tmp_path / "d.csv", "text,label\na,x\n"), text_col="zz"),
        lambda: load_data(tmp_path / "missing"),
    ]
    for case in cases:
        with pytest.raises(DataError) as info:
            case()
        assert "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------- LabelledData


def test_subset_and_len():
    d = load_data("digits")
    s = d.subset([5, 0, 7])
    assert len(s) == 3 and s.splits == {} and s.classes == d.classes
    np.testing.assert_array_equal(s.inputs, d.inputs[[5, 0, 7]])
    t = LabelledData("text", ["a", "b", "c"], np.array([0, 1, 0]), ["x", "y"], {"train": np.array([0, 1, 2])}, "t", [])
    u = t.subset(np.array([2, 1]))
    assert u.inputs == ["c", "b"] and u.labels.tolist() == [0, 1] and u.splits == {}
    assert "n=3" in repr(t)


# ----------------------------------------------------------------------------------------- real data sets


def test_real_sms_spam():
    d = load_data(_need("sms-spam") / "SMSSpamCollection")
    assert len(d) == 5574 and d.classes == ["ham", "spam"]
    assert np.bincount(d.labels).tolist() == [4827, 747]
    assert d.warnings == []


def test_real_pneumoniamnist():
    d = load_data(_need("pneumoniamnist") / "pneumoniamnist.npz")
    assert d.inputs.shape == (3166, 28, 28) and d.classes == ["0", "1"]
    assert {k: len(v) for k, v in d.splits.items()} == {"train": 2428, "val": 270, "test": 468}


def test_real_hymenoptera_val_becomes_test():
    from ajuste.data.splits import make_splits

    d = load_data(_need("hymenoptera"))
    assert d.classes == ["ants", "bees"] and len(d) == 398
    assert {k: len(v) for k, v in d.splits.items()} == {"train": 245, "val": 153}
    s = make_splits(d, seed=0)
    np.testing.assert_array_equal(s["test"], d.splits["val"])
    assert set(s["val"]) <= set(d.splits["train"]) and len(s["train"]) + len(s["val"]) == 245


def test_real_trec_and_sst2():
    trec = load_data(_need("trec"))
    assert trec.classes == [str(i) for i in range(6)]
    assert {k: len(v) for k, v in trec.splits.items()} == {"train": 5452, "test": 500}
    sst2 = load_data(_need("sst2"))
    assert {k: len(v) for k, v in sst2.splits.items()} == {"train": 6920, "val": 872, "test": 1821}


def test_real_clothing_small():
    d = load_data(_need("clothing-small"))
    assert len(d.classes) == 10 and "t-shirt" in d.classes
    assert {k: len(v) for k, v in d.splits.items()} == {"train": 3068, "val": 341, "test": 372}
    assert d.warnings == []


# ----------------------------------------------------------------------------------------------- odd corners


def test_macosx_resource_folder_is_ignored(tmp_path):
    root = _image_tree(tmp_path / "ds", {"a": 2, "b": 2})
    (root / "__MACOSX" / "a").mkdir(parents=True)
    (root / "__MACOSX" / "a" / "._a0.png").write_bytes(b"\x00\x05\x16\x07")
    d = load_data(root)
    assert d.classes == ["a", "b"] and d.warnings == []


def test_pandas_index_column(tmp_path):
    f = _write(tmp_path / "d.csv", ",text,label\n0,aa,x\n1,bb,y\n2,cc,x\n3,dd,y\n")
    d = load_data(f)
    assert d.inputs == ["aa", "bb", "cc", "dd"] and d.classes == ["x", "y"]


def test_jsonl_line_separator_inside_string(tmp_path):
    rows = [{"text": "a\u2028b", "label": "x"}, {"text": "c\x1cd", "label": "y"}, {"text": "e", "label": "x"},
            {"text": "f", "label": "y"}]
    f = _write(tmp_path / "d.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    assert load_data(f).inputs[:2] == ["a\u2028b", "c\x1cd"]


def test_explicit_columns_skip_the_headerless_guess(tmp_path):
    header = "what did the customer say about it\tverdict\n"
    f = _write(tmp_path / "d.tsv", header + "good\tpos\nbad\tneg\nfine\tpos\nawful\tneg\n")
    with pytest.raises(DataError, match="no header line"):
        load_data(f)
    d = load_data(f, text_col="what did the customer say about it", label_col="verdict")
    assert d.classes == ["neg", "pos"]


def test_builtin_digits_read_without_scikit_learn_equal_load_digits():
    from sklearn.datasets import load_digits

    from ajuste.data.sources.digits import _digits_arrays

    images, target = _digits_arrays()
    ref = load_digits()
    assert np.array_equal(images, ref.images) and np.array_equal(target, ref.target)
