"""Issue 7, goal 1: a corpus of bad inputs, generated into a temp dir (no binary files in git).

Every case either loads correctly (what was loaded is asserted: counts, labels, texts, pixels, orientation) or
ends with ONE line naming the file/row and the fix. Across the whole corpus: zero raw tracebacks, zero Python
warnings, no "unexpected ..." errors (the CLI's last-resort wording for an exception nobody anticipated).
The table in docs/reliability.md lists the same cases and outcomes.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from ajuste.cli.main import main
from ajuste.data.pipeline import ImageStore, Preprocessing, load_image_file
from ajuste.data.sources import LabelledData, load_data
from ajuste.errors import DataError

RED, BLUE, GREEN = (220, 30, 30), (30, 30, 220), (30, 200, 30)
PRE = Preprocessing("image", image_size=16, base_size=16, interpolation="bilinear")


# ---------------------------------------------------------------------------------------------- generators


def png_bytes(width: int, height: int, *, bit_depth: int = 8, colour_type: int = 2, rows: bytes = b"") -> bytes:
    """A PNG written chunk by chunk, so it can declare any size (the decompression-bomb cases stay tiny on disk).

    colour_type 2 = RGB, 0 = grey; ``rows`` is the raw scanline data (a filter byte per row + pixels).
    """

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows or b"\x00" * 64))
            + chunk(b"IEND", b""))


def solid(path: Path, colour=RED, size=(16, 16), fmt: str | None = None, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt, **save)
    return path


def image_folder(root: Path, n: int = 3) -> Path:
    """root/cat/{0,1,2}.png (red) and root/dog/{0,1,2}.png (blue): the good part of every image case."""
    for i in range(n):
        solid(root / "cat" / f"{i}.png", RED)
        solid(root / "dog" / f"{i}.png", BLUE)
    return root


def write(path: Path, data: str | bytes, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode(encoding))
    return path


def _truncated_jpeg(root: Path) -> None:
    full = root / "tmp.jpg"
    rng = np.random.default_rng(0)  # noise: a JPEG of a solid colour is too small to cut meaningfully
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(full, quality=95)
    write(root / "cat" / "trunc.jpg", full.read_bytes()[: full.stat().st_size * 2 // 5])
    full.unlink()


def _png16(root: Path) -> None:
    # 16-bit grey, left half 0x4000 (→ 64 in 8 bits), right half 0xC000 (→ 191); PIL's own convert("RGB")
    # saturates every value above 255 to white
    a = np.full((16, 16), 0x4000, np.uint16)
    a[:, 8:] = 0xC000
    Image.fromarray(a).save(root / "cat" / "grey16.png")
    # 16-bit RGB (48 bits per pixel): PIL cannot write it, so build the scanlines by hand
    px = struct.pack(">HHH", 0xFFFF, 0x8000, 0x0000)
    write(root / "cat" / "rgb16.png", png_bytes(16, 16, bit_depth=16, rows=(b"\x00" + px * 16) * 16))


def _cmyk(root: Path) -> None:
    (root / "cat").mkdir(parents=True, exist_ok=True)
    Image.new("CMYK", (16, 16), (255, 0, 0, 0)).save(root / "cat" / "cyan-cmyk.jpg")  # pure cyan


def _palette(root: Path) -> None:
    p = Image.new("P", (16, 16), 2)
    p.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    # transparency given per palette entry (tRNS bytes): convert("RGB") would emit a UserWarning
    p.save(root / "cat" / "palette.png", transparency=bytes([0, 128, 255]))


def _gif(root: Path) -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in (GREEN, RED, BLUE)]
    frames[0].save(root / "cat" / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)


def _exif(root: Path) -> None:
    # stored landscape 32x16 (left red, right blue) with orientation 6 = "rotate 90° clockwise to display":
    # shown upright it is portrait 16x32, red on top
    im = Image.new("RGB", (32, 16), BLUE)
    im.paste(RED, (0, 0, 16, 16))
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(root / "cat" / "rotated.jpg", exif=exif.tobytes(), quality=95)


def _bombs(root: Path) -> None:
    write(root / "cat" / "bomb.png", png_bytes(30000, 30000))  # 900 M pixels: PIL raises on open
    write(root / "cat" / "big.png", png_bytes(12000, 12000))  # 144 M pixels: PIL only warns, then decodes


def _hidden(root: Path) -> None:
    write(root / "cat" / ".DS_Store", b"\x00\x00\x00\x01Bud1" + b"\x00" * 100)
    write(root / "cat" / "._0.png", b"\x00\x05\x16\x07AppleDouble junk")
    solid(root / ".thumbnails" / "x.png", GREEN)  # a hidden folder is not a class
    solid(root / "__MACOSX" / "cat" / "._1.png", GREEN)
    write(root / "dog" / "Thumbs.db", b"\xd0\xcf\x11\xe0 not an image")


def _symlinks(root: Path) -> None:
    os.symlink("..", root / "cat" / "up")  # a folder loop inside a class
    os.symlink("self.jpg", root / "cat" / "self.jpg")  # a file that points at itself
    os.symlink("gone.png", root / "dog" / "dangling.png")
    os.symlink(".", root / "mirror")  # a "class" folder that is the root itself


def _all_bad(root: Path) -> None:
    for cls in ("cat", "dog"):
        for i in range(3):
            write(root / cls / f"{i}.jpg", b"\xff\xd8\xff\xe0 garbage")


# The text cases: (file name, content as bytes or str).
_ROWS = "".join(f"text {i},{'pos' if i % 2 else 'neg'}\n" for i in range(6))


def _text_cases() -> dict[str, tuple[str, bytes]]:
    u = "text,label\n"
    return {
        "cp1252_csv": ("cp1252.csv", (u + "caf\u00e9 cr\u00e8me,pos\n" + _ROWS).encode("cp1252")),
        "mixed_encodings": ("mixed.csv", (u + "caf\u00e9,pos\n" + _ROWS).encode() + "na\u00efve,neg\n".encode("latin-1")),
        "utf8_bom": ("bom.csv", ("\ufefftext,label\ncaf\u00e9,pos\n" + _ROWS).encode()),
        "utf8_bom_jsonl": ("bom.jsonl", ("\ufeff" + "".join(
            f'{{"text": "t{i}", "label": "{"ab"[i % 2]}"}}\n' for i in range(6))).encode()),
        "quoted_newlines": ("quoted.csv", (u + '"line one\nline two, with a comma",pos\n"say ""hi""",neg\n'
                                           + _ROWS).encode()),
        "duplicated_header": ("dup.csv", ("text,label,label\n" + "".join(
            f"t{i},a,b\n" for i in range(4))).encode()),
        "nan_labels": ("nan.csv", (u + "a,pos\nb,\nc,neg\nd,NaN\ne,n/a\nf,pos\ng,neg\n").encode()),
        "numeric_labels": ("num.csv", (u + "a,1\nb,2.0\nc,10\nd, 2\ne,1.0\nf,10\n").encode()),
        "mixed_type_labels": ("mixed_labels.jsonl", "".join(
            f'{{"text": "t{i}", "label": {lab}}}\n' for i, lab in enumerate(['1', '"1"', '1.0', '"cat"', '"cat"']))
            .encode()),
        "long_text_field": ("long.csv", (u + "x" * 200_000 + ",pos\n" + _ROWS).encode()),
        "nul_bytes": ("nul.csv", (u + "a\x00b,pos\n" + _ROWS).encode()),
        "unclosed_quote": ("unclosed.csv", (u + 'ok,pos\n"never closed,neg\n' + _ROWS).encode()),
        "empty_file": ("empty.csv", b""),
        "xlsx_renamed": ("sheet.csv", b"PK\x03\x04\x14\x00\x06\x00" + bytes(range(256)) * 4),
        "binary_garbage": ("garbage.tsv", bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8))),
        "deep_json": ("deep.jsonl", ('{"text": "a", "label": "x"}\n{"text": ' + "[" * 100_000 + "\n").encode()),
    }


_IMAGE_CASES: dict[str, Callable[[Path], None]] = {
    "truncated_jpeg": _truncated_jpeg,
    "text_named_png": lambda r: write(r / "cat" / "notes.png", "these are my notes, not a picture"),
    "zero_byte_image": lambda r: write(r / "cat" / "empty.jpg", b""),
    "png_16bit": _png16,
    "cmyk_jpeg": _cmyk,
    "palette_transparency": _palette,
    "animated_gif": _gif,
    "exif_rotated": _exif,
    "decompression_bomb": _bombs,
    "hidden_files": _hidden,
    "symlink_loop": _symlinks,
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """Every bad-input case as a path: image cases are folders (3 good cat + 3 good dog + the odd files)."""
    root = tmp_path_factory.mktemp("bad")
    out: dict[str, Path] = {}
    for name, make in _IMAGE_CASES.items():
        folder = image_folder(root / name)
        make(folder)
        out[name] = folder
    _all_bad(root / "all_images_bad")
    out["all_images_bad"] = root / "all_images_bad"
    for name, (fname, data) in _text_cases().items():
        out[name] = write(root / "text" / name / fname, data)
    return out


# ------------------------------------------------------------------------------------------ expectations


def decoded(data: LabelledData, name: str) -> np.ndarray:
    """The pipeline's decoded uint8 (H, W, 3) of the input whose file name is ``name``."""
    i = next(k for k, p in enumerate(data.inputs) if Path(p).name == name)
    return ImageStore(data, PRE)[i].permute(1, 2, 0).numpy()


def near(pixel, colour, tol: int = 40) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, colour))


def only_good_images(data: LabelledData) -> None:
    assert data.classes == ["cat", "dog"] and data.class_counts() == {"cat": 3, "dog": 3}


def skipped(*names: str, reason: str = "") -> Callable[[LabelledData], None]:
    def check(data: LabelledData) -> None:
        only_good_images(data)
        assert len(data.warnings) == 1, data.warnings
        w = data.warnings[0]
        assert f"skipped {len(names)} unreadable image" in w and all(n in w for n in names), w
        assert reason in w.split(": ", 1)[1], w  # after the folder name (case folders are named like reasons)

    return check


def check_png16(data: LabelledData) -> None:
    assert data.class_counts() == {"cat": 5, "dog": 3} and data.warnings == []
    grey = decoded(data, "grey16.png")
    assert near(grey[8, 2], (64, 64, 64), 3) and near(grey[8, 13], (191, 191, 191), 3), (grey[8, 2], grey[8, 13])
    assert near(decoded(data, "rgb16.png")[8, 8], (255, 128, 0), 3)


def check_cmyk(data: LabelledData) -> None:
    assert data.class_counts() == {"cat": 4, "dog": 3}
    assert near(decoded(data, "cyan-cmyk.jpg")[8, 8], (0, 255, 255))


def check_palette(data: LabelledData) -> None:
    assert data.class_counts() == {"cat": 4, "dog": 3}
    assert near(decoded(data, "palette.png")[8, 8], (0, 0, 255), 0)


def check_gif(data: LabelledData) -> None:
    assert data.class_counts() == {"cat": 4, "dog": 3}
    assert near(decoded(data, "anim.gif")[8, 8], GREEN)  # the first frame


def check_exif(data: LabelledData) -> None:
    assert data.class_counts() == {"cat": 4, "dog": 3}
    path = next(p for p in data.inputs if p.endswith("rotated.jpg"))
    img = load_image_file(path, PRE).permute(1, 2, 0).numpy()
    assert img.shape == (32, 16, 3)  # portrait: the orientation tag was applied
    assert near(img[4, 8], RED) and near(img[28, 8], BLUE)


def check_hidden(data: LabelledData) -> None:
    only_good_images(data)  # .DS_Store, ._0.png, Thumbs.db, .thumbnails/ and __MACOSX/ are not examples
    assert data.warnings == []


def check_symlinks(data: LabelledData) -> None:
    only_good_images(data)  # 'mirror' is no class, cat/up is not followed, the looping/dangling links are skipped
    assert any("cat/self.jpg" in w and "dog/dangling.png" in w for w in data.warnings), data.warnings
    assert any("mirror" in w and "symbolic link" in w for w in data.warnings), data.warnings


def texts(expected_texts: list[str] | None = None, classes: list[str] | None = None, labels: list[str] | None = None,
          warning: str | None = None) -> Callable[[LabelledData], None]:
    def check(data: LabelledData) -> None:
        assert data.modality == "text" and len(data.inputs) == len(data.labels)
        if expected_texts is not None:
            assert data.inputs[: len(expected_texts)] == expected_texts
        if classes is not None:
            assert data.classes == classes
        if labels is not None:
            assert [data.classes[k] for k in data.labels] == labels
        if warning is None:
            assert data.warnings == []
        else:
            assert len(data.warnings) == 1 and warning in data.warnings[0], data.warnings

    return check


@dataclass
class Expect:
    loads: Callable[[LabelledData], None] | None = None  # the checks on what was loaded
    error: str | None = None  # words the one error line must hold (besides the file name)


EXPECT: dict[str, Expect] = {
    "truncated_jpeg": Expect(loads=skipped("cat/trunc.jpg", reason="truncated")),
    "text_named_png": Expect(loads=skipped("cat/notes.png", reason="not an image")),
    "zero_byte_image": Expect(loads=skipped("cat/empty.jpg", reason="empty file")),
    "png_16bit": Expect(loads=check_png16),
    "cmyk_jpeg": Expect(loads=check_cmyk),
    "palette_transparency": Expect(loads=check_palette),
    "animated_gif": Expect(loads=check_gif),
    "exif_rotated": Expect(loads=check_exif),
    "decompression_bomb": Expect(loads=skipped("cat/big.png", "cat/bomb.png", reason="decompression-bomb limit; downscale it")),
    "hidden_files": Expect(loads=check_hidden),
    "symlink_loop": Expect(loads=check_symlinks),
    "all_images_bad": Expect(error="none of the 6 images"),
    "cp1252_csv": Expect(error="is not valid UTF-8 (byte 0xe9 on line 2); re-save it as UTF-8"),
    "mixed_encodings": Expect(error="is not valid UTF-8 (byte 0xef on line 9)"),
    "utf8_bom": Expect(loads=texts(["caf\u00e9", "text 0"], classes=["neg", "pos"])),
    "utf8_bom_jsonl": Expect(loads=texts(["t0", "t1"], classes=["a", "b"])),
    "quoted_newlines": Expect(loads=texts(["line one\nline two, with a comma", 'say "hi"'])),
    "duplicated_header": Expect(error="repeats the column name 'label'; give each column a unique name"),
    "nan_labels": Expect(loads=texts(["a", "c", "f", "g"], labels=["pos", "neg", "pos", "neg"],
                                     warning="dropped 3 rows with no label ('label') in")),
    "numeric_labels": Expect(loads=texts(classes=["1", "2", "10"], labels=["1", "2", "10", "2", "1", "10"])),
    "mixed_type_labels": Expect(loads=texts(classes=["1", "cat"], labels=["1", "1", "1", "cat", "cat"])),
    "long_text_field": Expect(loads=texts(["x" * 200_000, "text 0"])),
    "nul_bytes": Expect(loads=texts(["a\x00b", "text 0"])),
    "unclosed_quote": Expect(error="a quote opened on line 3 of"),
    "empty_file": Expect(error="is empty; it needs a header line"),
    "xlsx_renamed": Expect(error="is a zip archive (an Excel .xlsx?), not a text table; export it as CSV"),
    "binary_garbage": Expect(error="is not valid UTF-8"),
    "deep_json": Expect(error="line 2 of"),
}


def test_every_case_has_an_expectation(corpus):
    assert set(corpus) == set(EXPECT)


@pytest.mark.parametrize("case", list(EXPECT))
def test_case_loads_correctly_or_names_the_file_and_the_fix(corpus, case):
    expect, path = EXPECT[case], corpus[case]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if expect.error is None:
            data = load_data(path)
            expect.loads(data)
            if data.modality == "image":  # the pipeline decodes every kept image without complaint
                store = ImageStore(data, PRE)
                for i in range(len(data)):
                    img = store[i]
                    assert img.dtype.is_floating_point is False and img.shape[0] == 3 and min(img.shape[1:]) == 16
        else:
            with pytest.raises(DataError) as info:
                load_data(path)
            line = str(info.value)
            assert "\n" not in line and expect.error in line, line
            assert path.name in line or f"{path.name}/" in line, line
    assert [str(w.message) for w in caught] == []  # no Python warning reaches the user's terminal


# --------------------------------------------------------------------------------------------- the CLI


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert [str(w.message) for w in caught] == []
    return rc, out, err


def test_zero_tracebacks_across_the_corpus(corpus, capsys):
    """`ajuste train <case> --print-config` loads and splits the data, then stops: each case gives a config
    (with one 'warning:' line per kind of thing it skipped, as training would) or exactly one 'error:' line,
    never a traceback or the last-resort 'unexpected' wording."""
    outcomes = {}
    for case, path in corpus.items():
        rc, out, err = _cli(["train", path, "--print-config"], capsys)
        assert "Traceback" not in out + err and "unexpected" not in err, (case, err)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        if EXPECT[case].error is None:
            lines = [ln for ln in lines if not ln.startswith("warning: ")]
            assert rc == 0 and lines == [] and f"source: {path}" in out, (case, rc, err)
        else:
            assert rc == 2 and len(lines) == 1 and lines[0].startswith("error:"), (case, rc, err)
        outcomes[case] = rc
    assert len(outcomes) == len(EXPECT)


SUBPROCESS_CASES = ("decompression_bomb", "cp1252_csv", "deep_json", "xlsx_renamed", "duplicated_header")


def _ajuste(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "AJUSTE_DEBUG": "", "PYTHONWARNINGS": "default", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "ajuste", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_real_cli_process_prints_no_traceback(corpus, case):
    proc = _ajuste("train", corpus[case], "--print-config")
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    if EXPECT[case].error is None:
        lines = [ln for ln in lines if not ln.startswith("warning: ")]  # data warnings only
        assert proc.returncode == 0 and lines == [], proc.stderr
    else:
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
        assert corpus[case].name in lines[0]


def test_training_on_every_odd_image_at_once(tmp_path):
    """One real `ajuste train` process over a folder holding every loadable odd image and every skipped one:
    it completes; stderr holds only the one 'skipped' warning line; nothing else (no PIL warning)."""
    root = image_folder(tmp_path / "odd", n=4)
    for make in (_png16, _cmyk, _palette, _gif, _exif, _bombs, _hidden, _truncated_jpeg):
        make(root)
    write(root / "dog" / "notes.png", "not a picture")
    out = tmp_path / "run"
    proc = _ajuste("train", root, "--model", "timm/test_efficientnet", "--set", "model.pretrained=false",
                   "--set", "data.image_size=32", "--epochs", "1", "--set", "strategy.head_epochs=1",
                   "--set", "train.min_steps=0", "-q", "--out", out)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: skipped 4 unreadable images"), proc.stderr
    assert (out / "summary.json").is_file()
