"""Issue 7, goals 2, 3 and 5: durable writes, untrusted files, and the machine's limits.

- atomic writes fsync the file, rename it, then fsync the directory; a failed write names the file and leaves the
  old content in place;
- the package never unpickles, evals or loads YAML unsafely (an AST scan, with an allowlist that gives reasons);
- a run directory whose labels, weights or records disagree is refused in one line;
- an export never writes outside its output directory, whatever the run's config holds;
- a read-only or full output directory fails before any epoch (train, compare, tune); running out of memory
  names the batch size to try.
"""

from __future__ import annotations

import ast
import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ajuste.cli.main import main
from ajuste.errors import AjusteError
from ajuste.io import append_jsonl, atomic_write_json, atomic_write_text
from test_cli import one_error_line, run_cli

TINY = ["--model", "timm/test_efficientnet", "--set", "model.pretrained=false", "--set", "data.image_size=32",
        "--set", "train.threads=1", "--set", "train.min_steps=0"]
PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ajuste"


# ------------------------------------------------------------------------------------------ durable writes


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name file descriptors")
def test_atomic_write_syncs_the_file_then_the_directory_after_the_rename(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "state.json"
    synced: list[tuple[str, bool]] = []  # (path synced, whether the target existed at that moment)
    real = os.fsync

    def spy(fd):
        synced.append((_fd_path(fd), target.exists()))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    atomic_write_json(target, {"epoch": 3})
    assert json.loads(target.read_text()) == {"epoch": 3}
    paths = [p for p, _ in synced]
    assert len(synced) == 2, synced
    assert Path(paths[0]).parent == target.parent and paths[0] != str(target)  # the temp file, before the rename
    assert synced[0][1] is False
    assert paths[1] == str(target.parent) and synced[1][1] is True  # the directory, after the rename
    assert [p.name for p in target.parent.iterdir()] == ["state.json"]  # no temp file left behind


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name file descriptors")
def test_append_jsonl_syncs_the_directory_when_it_creates_the_file(tmp_path, monkeypatch):
    path = tmp_path / "results.jsonl"
    synced: list[str] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(_fd_path(fd)), real(fd))[1])
    append_jsonl(path, {"cell": 1})
    append_jsonl(path, {"cell": 2})
    assert synced == [str(path), str(tmp_path), str(path)]  # the new entry once; every line
    assert [json.loads(x)["cell"] for x in path.read_text().splitlines()] == [1, 2]


def test_a_failed_write_names_the_file_and_keeps_the_old_content(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    atomic_write_text(target, "old\n")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as info:
        atomic_write_text(target, "new\n")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


# ------------------------------------------------------------------------------------------ untrusted files

# (file under src/ajuste, call) pairs allowed despite the scan, with the reason.
ALLOWED = {
    ("export/torchscript.py", "torch.jit.load"): "loads the TorchScript file the export itself just wrote, to check "
                                                 "its logits",
    ("export/hf.py", "trust_remote_code"): "loads the modeling code the export itself just wrote, to check its logits",
}


def _unsafe_calls(tree: ast.AST) -> list[tuple[int, str]]:
    found = []

    def kw(node: ast.Call, name: str):
        return next((k.value for k in node.keywords if k.arg == name), None)

    def is_const(v, value) -> bool:
        return isinstance(v, ast.Constant) and v.value is value

    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            for n in names:
                if n and n.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"):
                    found.append((node.lineno, f"import {n}"))
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = ast.unparse(f)
        if isinstance(f, ast.Name) and f.id in ("eval", "exec", "compile", "__import__"):
            found.append((node.lineno, f.id))
        elif name.endswith("yaml.load"):
            loader = kw(node, "Loader")
            if loader is None or "Safe" not in ast.unparse(loader):
                found.append((node.lineno, "yaml.load without SafeLoader"))
        elif name.endswith(("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all")):
            found.append((node.lineno, name))
        elif name.endswith("torch.load") and not is_const(kw(node, "weights_only"), True):
            found.append((node.lineno, "torch.load without weights_only=True"))
        elif name.endswith(("np.load", "numpy.load")) and not is_const(kw(node, "allow_pickle"), False):
            found.append((node.lineno, f"{name} without allow_pickle=False"))
        elif name.endswith("jit.load"):
            found.append((node.lineno, "torch.jit.load"))
        if is_const(kw(node, "trust_remote_code"), True):
            found.append((node.lineno, "trust_remote_code"))
    return found


def test_package_never_unpickles_evals_or_loads_yaml_unsafely():
    problems, used = [], set()
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, what in _unsafe_calls(ast.parse(path.read_text(encoding="utf-8"))):
            key = (path.relative_to(PACKAGE).as_posix(), what)
            if key in ALLOWED:
                used.add(key)
            else:
                problems.append(f"{path.relative_to(PACKAGE)}:{line}: {what}")
    assert problems == []
    assert used == set(ALLOWED), f"stale allowlist entries: {set(ALLOWED) - used}"


def test_the_scan_finds_what_it_looks_for():
    bad = ("import pickle\nimport yaml, torch, numpy as np\neval('1')\nyaml.load(s)\nyaml.load(s, Loader=yaml.Loader)"
           "\ntorch.load(p)\ntorch.load(p, weights_only=False)\nnp.load(p, allow_pickle=True)\nyaml.unsafe_load(s)\n"
           "exec('x=1')\n")
    good = "import yaml, torch\nyaml.safe_load(s)\nyaml.load(s, Loader=yaml.SafeLoader)\ntorch.load(p, weights_only=True)\n" \
           "model.eval()\nnp.load(p, allow_pickle=False)\n"
    assert sorted(line for line, _ in _unsafe_calls(ast.parse(bad))) == [1, 3, 4, 5, 6, 7, 8, 9, 10]
    assert _unsafe_calls(ast.parse(good)) == []


# ------------------------------------------------------------------------------------- run directories


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished tiny runs on digits that differ only in their training seed."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for seed in (0, 1):
        rc, stdout, stderr = run_cli(["train", "digits", *TINY, "--strategy", "linear-probe", "--epochs", "1",
                                      "--fraction", "0.2", "--set", f"train.seed={seed}", "-q",
                                      "--out", root / f"s{seed}"])
        assert rc == 0, stderr
        out[seed] = root / f"s{seed}"
    return out


@pytest.fixture()
def run_copy(runs, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(runs[0], dst)
    return dst


def _refused(run: Path, capsys) -> str:
    from ajuste.training.run_eval import load_run

    with pytest.raises(AjusteError) as info:
        load_run(run)
    msg = str(info.value)
    assert "\n" not in msg and str(run) in msg, msg
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 2  # and the CLI says the same in one line
    assert one_error_line(capsys.readouterr().err).startswith("error: ")
    return msg


def test_a_finished_run_loads_and_records_its_weights(runs):
    from ajuste.training.run_eval import load_run, weights_digest

    run = load_run(runs[0])
    assert len(run.classes) == 10 and run.summary["weights_sha256"] == weights_digest(runs[0] / "model.safetensors")


def test_renamed_classes_in_labels_json_are_refused(run_copy, capsys):
    labels = json.loads((run_copy / "labels.json").read_text())
    (run_copy / "labels.json").write_text(json.dumps(labels[::-1]))  # same count, another order
    msg = _refused(run_copy, capsys)
    assert "labels.json" in msg and "restore" in msg


def test_labels_json_with_a_class_missing_is_refused(run_copy, capsys):
    labels = json.loads((run_copy / "labels.json").read_text())
    (run_copy / "labels.json").write_text(json.dumps(labels[:-1]))
    assert "backbone.json says 10 classes but labels.json lists 9" in _refused(run_copy, capsys)


def test_weights_of_another_run_are_refused(runs, run_copy, capsys):
    shutil.copy(runs[1] / "model.safetensors", run_copy / "model.safetensors")  # same architecture and classes
    assert "not the file this run saved" in _refused(run_copy, capsys)


def test_weights_of_another_architecture_are_refused(run_copy, capsys):
    from safetensors.torch import load_file, save_file

    state = load_file(run_copy / "model.safetensors")
    head = next(k for k, v in state.items() if v.ndim == 2 and v.shape[0] == 10)
    state[head] = state[head][:3]  # a 3-class head
    save_file(state, run_copy / "model.safetensors")
    summary = json.loads((run_copy / "summary.json").read_text())
    del summary["weights_sha256"]  # as in a run from before checksums: the shapes still give it away
    (run_copy / "summary.json").write_text(json.dumps(summary))
    msg = _refused(run_copy, capsys)
    assert head in msg and "[3," in msg and "[10," in msg


@pytest.mark.parametrize("damage", ["truncated_weights", "labels_not_json", "labels_not_a_list", "backbone_missing"])
def test_damaged_run_files_are_refused(run_copy, capsys, damage):
    if damage == "truncated_weights":
        data = (run_copy / "model.safetensors").read_bytes()
        (run_copy / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "labels_not_json":
        (run_copy / "labels.json").write_text('["0", "1", ')
    elif damage == "backbone_missing":
        (run_copy / "backbone.json").unlink()
    else:
        (run_copy / "labels.json").write_text('{"0": 0}')
    msg = _refused(run_copy, capsys)
    if damage == "labels_not_json":
        assert "labels.json is damaged" in msg and "retrain" in msg
    if damage == "backbone_missing":
        assert "missing backbone.json" in msg and "retrain" in msg


def test_export_writes_nothing_outside_its_output(run_copy, tmp_path):
    """The run's config holds paths that point elsewhere: the export copies records, never follows them."""
    import yaml

    from ajuste.export import export_run

    cfg = yaml.safe_load((run_copy / "config.yaml").read_text())
    cfg["data"]["source"] = "../../../../etc"
    (run_copy / "config.yaml").write_text(yaml.safe_dump(cfg))
    before = {p for p in tmp_path.rglob("*")}
    out = tmp_path / "exports" / "mine"
    export_run(run_dir=run_copy, out=out)
    new = {p for p in tmp_path.rglob("*")} - before
    assert new and all(p == out.parent or p.resolve().is_relative_to(out.resolve()) for p in new), sorted(new)
    assert not any(p.is_symlink() for p in new)


def test_export_refuses_a_writer_that_leaves_its_directory(run_copy, tmp_path, monkeypatch):
    import ajuste.export as ex

    write, check = ex._FORMATS_IMPL["ajuste"]

    def sneaky(bb, run, stage, probes):
        write(bb, run, stage, probes)
        (stage / "notes.txt").symlink_to(tmp_path / "elsewhere.txt")

    monkeypatch.setitem(ex._FORMATS_IMPL, "ajuste", (sneaky, check))
    with pytest.raises(AjusteError, match="points outside"):
        ex.export_run(run_dir=run_copy, out=tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "elsewhere.txt").exists()


# ------------------------------------------------------------------------------------------ resources

COMMANDS = {
    "train": lambda out: ["train", "digits", *TINY, "--strategy", "linear-probe", "--epochs", "1", "--fraction",
                          "0.1", "-q", "--out", out],
    "compare": lambda out: ["compare", "digits", *TINY, "--set", "train.epochs=1", "--strategies",
                            "linear-probe,scratch", "--fractions", "0.1", "--no-similarity", "-q", "--out", out],
    "tune": lambda out: ["tune", "digits", *TINY, "--strategy", "linear-probe", "--epochs", "1", "--fraction", "0.1",
                         "--trials", "2", "--sampler", "random", "--pruner", "none", "-q", "--out", out],
}


@pytest.fixture()
def no_epochs(monkeypatch):
    """Fails the test if any training starts: resource errors must come before the first epoch."""
    import ajuste.training.loop as loop

    calls = []

    def fit(**kwargs):
        calls.append(kwargs)
        raise AssertionError("training started")

    monkeypatch.setattr(loop, "fit", fit)
    return calls


def _under(path: str | bytes | int, root: Path) -> bool:
    if isinstance(path, int):
        return False
    p = os.fsdecode(path)
    return os.path.abspath(p).startswith(str(root) + os.sep) or os.path.abspath(p) == str(root)


def _deny_writes(monkeypatch, root: Path, code: int) -> None:
    """Opening a file for writing (or making a directory) under ``root`` fails with ``code`` (EROFS, ENOSPC): what
    a read-only mount or a full disk does, without needing one (and tests may run as root, which chmod
    does not stop)."""
    import builtins

    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND

    def fail(path):
        raise OSError(code, os.strerror(code), os.fsdecode(path))

    def fake_open(file, mode="r", *a, **k):
        if _under(file, root) and any(c in mode for c in "wax+"):
            fail(file)
        return real_open(file, mode, *a, **k)

    def fake_os_open(path, flags, *a, **k):
        if _under(path, root) and flags & writing:
            fail(path)
        return real_os_open(path, flags, *a, **k)

    def fake_mkdir(path, *a, **k):
        if _under(path, root):
            fail(path)
        return real_mkdir(path, *a, **k)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("code, words", [(errno.EROFS, "pick a writable --out"),
                                         (errno.ENOSPC, "free some space")])
def test_unwritable_output_fails_before_any_epoch(command, code, words, tmp_path, monkeypatch, capsys, no_epochs):
    out = tmp_path / "out"
    _deny_writes(monkeypatch, tmp_path, code)
    assert main([str(a) for a in COMMANDS[command](out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert words in line and str(out) in line and "unexpected" not in line, line
    assert no_epochs == []


@pytest.mark.parametrize("command", list(COMMANDS))
def test_output_under_a_file_fails_before_any_epoch(command, tmp_path, capsys, no_epochs):
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "file" / "out"
    assert main([str(a) for a in COMMANDS[command](out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(tmp_path / "file") in line and "unexpected" not in line, line
    assert no_epochs == []


@pytest.mark.parametrize("command", ["train", "compare"])
def test_an_almost_full_disk_fails_before_any_epoch(command, tmp_path, monkeypatch, capsys, no_epochs):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=50 * 2**20))
    assert main([str(a) for a in COMMANDS[command](tmp_path / "out")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "only 50 MB free" in line and "free some space" in line, line
    assert no_epochs == []


def _can_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    return subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt && umount /mnt"],
                          capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_mount(), reason="needs root and mount namespaces (unshare -m) for a real full disk")
def test_a_really_full_disk_is_one_line(tmp_path):
    """`ajuste train` onto a real, full tmpfs (in a private mount namespace, gone when the process ends)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = (f"mount -t tmpfs -o size=256k tmpfs {mnt} && (cat /dev/zero > {mnt}/fill 2>/dev/null; true) && "
              f"exec {sys.executable} -m ajuste " + " ".join(COMMANDS["train"](f"{mnt}/run")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AJUSTE_DEBUG": ""}
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc.stderr)
    assert "No space left on device" in line and f"{mnt}/run" in line, line


ALLOC_FAIL = ("[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: can't allocate memory: you tried to "
              "allocate 25769803776 bytes. Error code 12 (Cannot allocate memory)")


@pytest.mark.parametrize("error", [RuntimeError(ALLOC_FAIL), MemoryError(), RuntimeError("not enough memory")])
def test_out_of_memory_names_the_batch_size_to_try(error, tmp_path, monkeypatch, capsys):
    import ajuste.training.loop as loop

    def fit(**kwargs):
        raise error

    monkeypatch.setattr(loop, "fit", fit)
    out = tmp_path / "run"
    args = COMMANDS["train"](out) + ["--set", "data.batch_size=48"]
    assert main([str(a) for a in args]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "out of memory at batch size 48" in line and "--set data.batch_size=24" in line, line
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "failed" and "data.batch_size=24" in status["error"]


def test_other_runtime_errors_are_not_called_out_of_memory(tmp_path, monkeypatch, capsys):
    import ajuste.training.loop as loop

    def fit(**kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 5x2)")

    monkeypatch.setattr(loop, "fit", fit)
    assert main([str(a) for a in COMMANDS["train"](tmp_path / "run")]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "unexpected RuntimeError: mat1 and mat2" in line and "memory" not in line, line


def test_a_tune_trial_that_runs_out_of_memory_records_the_batch_size_to_try(tmp_path, monkeypatch, capsys):
    import optuna

    import ajuste.training.loop as loop

    def fit(**kwargs):
        raise RuntimeError(ALLOC_FAIL)

    monkeypatch.setattr(loop, "fit", fit)
    out = tmp_path / "tune"
    main([str(a) for a in COMMANDS["tune"](out) + ["--set", "data.batch_size=32"]])
    capsys.readouterr()
    url = f"sqlite:///{out / 'study.db'}"
    (name,) = optuna.get_all_study_names(url)
    study = optuna.load_study(study_name=name, storage=url)
    errors = [t.user_attrs.get("error", "") for t in study.trials]
    assert errors, "no trial ran"
    for e in errors:  # the trial's batch size (the space may tune it), and half of it
        m = re.search(r"out of memory at batch size (\d+) \(an allocation of 24.0 GiB failed\); try a smaller "
                      r"batch: --set data.batch_size=(\d+)", e)
        assert m and int(m.group(2)) == int(m.group(1)) // 2, e
