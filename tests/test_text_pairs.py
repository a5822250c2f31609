"""Text pairs (``--text-col premise,hypothesis``): two columns read as (first, second) texts, the tokenizer's pair
encoding, the classical arm's pair features, and train / predict / evaluate / compare / export of a pair run.

The data is a "same words?" task built from a word list: the second text is the first's words reordered
("same") or four other words ("diff"). Each side alone is four random words whatever the label, so a model that
sees one side only stays at chance, and one that sees both can solve it."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
from test_cli import FAST, one_error_line, run_cli

from ajuste.cli.main import main
from ajuste.data.fingerprint import example_hashes
from ajuste.data.pipeline import Pipeline, Preprocessing
from ajuste.data.sources import load_data, load_texts
from ajuste.errors import AjusteError, DataError

WORDS = ("apple river stone cloud tiger lemon piano castle forest rocket candle mirror garden silver violin desert "
         "ocean pepper bridge lantern falcon meadow copper harbor").split()
PAIR = ["--text-col", "premise,hypothesis"]


def pair_rows(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a = rng.sample(WORDS, 4)
        same = i % 2 == 0
        b = rng.sample(a, 4) if same else rng.sample([w for w in WORDS if w not in a], 4)
        rows.append((" ".join(a), " ".join(b), "same" if same else "diff"))
    return rows


def write_pairs(path: Path, rows: list[tuple[str, ...]], header=("premise", "hypothesis", "label")) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def pairs_csv(tmp_path_factory) -> Path:
    return write_pairs(tmp_path_factory.mktemp("pairs") / "pairs.csv", pair_rows(240))


@pytest.fixture(scope="module")
def pair_run(pairs_csv, tiny_bert_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pair-run") / "run"
    rc, _, err = run_cli(["train", pairs_csv, *PAIR, "--model", tiny_bert_dir, "--strategy", "full", *FAST,
                          "--out", out, "-q"])
    assert rc == 0, err
    return out


# --- reading and encoding ---------------------------------------------------------------------------------


def test_two_columns_load_as_pairs_and_keep_them_through_subsets(pairs_csv):
    data = load_data(pairs_csv, text_col="premise,hypothesis")
    assert data.pairs and len(data) == 240
    rows = pair_rows(240)
    assert data.inputs[:3] == [(a, b) for a, b, _ in rows[:3]]
    assert "text pair columns 'premise' and 'hypothesis'" in data.source
    sub = data.subset([5, 1])
    assert sub.inputs == [data.inputs[5], data.inputs[1]] and sub.pairs
    # one column is still one text; spaces around the comma are forgiven
    assert not load_data(pairs_csv, text_col="premise").pairs
    assert load_data(pairs_csv, text_col="premise , hypothesis").inputs == data.inputs


def test_a_table_folder_reads_the_pair_from_every_split(tmp_path):
    rows = pair_rows(80)
    write_pairs(tmp_path / "train.csv", rows[:60])
    write_pairs(tmp_path / "test.csv", rows[60:])
    data = load_data(tmp_path, text_col="premise,hypothesis")
    assert data.pairs and sorted(data.splits) == ["test", "train"]
    assert data.inputs[int(data.splits["test"][0])] == rows[60][:2]


def test_the_encoding_is_the_tokenizers_pair_encoding(pairs_csv, tiny_text):
    data = load_data(pairs_csv, text_col="premise,hypothesis")
    tok = tiny_text.tokenizer
    pre = Preprocessing("text", max_length=64, text_pair=True)
    pipe = Pipeline(data, {"train": np.arange(40)}, pre, tokenizer=tok)
    x, _ = next(iter(pipe.loader("train", shuffle=True, batch_size=8)))  # length-bucketed, dynamic padding
    ids, types, mask = x["input_ids"], x["token_type_ids"], x["attention_mask"]
    assert ids.shape[1] % 8 == 0  # padded to the batch's longest, a multiple of 8
    for row_ids, row_types, row_mask in zip(ids.tolist(), types.tolist(), mask.tolist()):
        real = [(i, t) for i, t, m in zip(row_ids, row_types, row_mask) if m]
        seps = [k for k, (i, _) in enumerate(real) if i == tok.sep_token_id]
        assert real[0][0] == tok.cls_token_id and len(seps) == 2 and seps[1] == len(real) - 1
        # segment 0 up to and including the first [SEP], segment 1 after it
        assert [t for _, t in real] == [0] * (seps[0] + 1) + [1] * (len(real) - seps[0] - 1)
    # the same as the tokenizer's own pair call
    a, b = data.inputs[pipe.splits["train"][0]]
    want = tok(a, b)["input_ids"]
    assert pipe.dataset("train", augment=False).encodings[0]["input_ids"] == want


def test_truncation_cuts_the_longer_side_first(tiny_text):
    long, short = " ".join(WORDS * 3), "apple river"
    data = load_data_from([(long, short, "same"), (short, long, "diff")])
    pipe = Pipeline(data, {"t": np.arange(2)}, Preprocessing("text", max_length=16, text_pair=True),
                    tokenizer=tiny_text.tokenizer)
    tok = tiny_text.tokenizer
    short_ids = tok(short, add_special_tokens=False)["input_ids"]
    for enc in pipe.dataset("t", augment=False).encodings:
        assert len(enc["input_ids"]) == 16
        ids = enc["input_ids"]
        assert any(ids[k:k + len(short_ids)] == short_ids for k in range(len(ids)))  # the short side survives


def load_data_from(rows):
    from ajuste.data.sources import LabelledData

    return LabelledData(modality="text", inputs=[(a, b) for a, b, _ in rows],
                        labels=[0 if c == "same" else 1 for *_, c in rows], classes=["same", "diff"])


def test_fingerprints_see_both_sides_and_where_a_text_is_cut():
    base = load_data_from([("a b", "c", "same")])
    other_side = load_data_from([("a b", "d", "same")])
    moved_boundary = load_data_from([("a", "b c", "same")])
    swapped = load_data_from([("c", "a b", "same")])
    h = example_hashes(base)
    assert all(example_hashes(d) != h for d in (other_side, moved_boundary, swapped))


# --- the classical arm ------------------------------------------------------------------------------------


def test_classical_needs_both_sides_and_gets_them(pairs_csv, tmp_path):
    accs = {}
    for name, col in (("pair", "premise,hypothesis"), ("one", "premise")):
        rc, _, err = run_cli(["train", pairs_csv, "--text-col", col, "--strategy", "classical",
                              "--out", tmp_path / name, "-q"])
        assert rc == 0, err
        accs[name] = json.loads((tmp_path / name / "summary.json").read_text())["test_accuracy"]
    assert accs["pair"] >= 0.9, accs  # overlap (u*v, |u-v|) is a linear feature: the task is easy
    assert accs["one"] <= 0.75, accs  # one side alone carries no signal: chance within 36 test examples' noise
    from ajuste.training.run_eval import predict_inputs

    q = write_pairs(tmp_path / "q.csv", [("apple river stone cloud", "cloud stone river apple"),
                                         ("apple river stone cloud", "tiger lemon piano castle")],
                    header=("premise", "hypothesis"))
    assert [p["label"] for p in predict_inputs(tmp_path / "pair", [str(q)])] == ["same", "diff"]


def test_classical_pair_features_in_torch_equal_the_scikit_learn_matrix(pairs_csv):
    import torch

    from ajuste.backbones.classical import TfidfBackbone

    data = load_data(pairs_csv, text_col="premise,hypothesis")
    bb = TfidfBackbone.fit(data.inputs[:200], 2, max_features=1000)
    n = bb.idf.numel()
    assert bb.pair and bb.num_features == 4 * n
    texts = data.inputs[200:210]
    enc = bb.tokenizer([a for a, _ in texts], [b for _, b in texts], return_tensors="pt")
    got = bb.features(enc)
    want = torch.from_numpy(bb.matrix(texts).toarray()).float()
    assert torch.allclose(got, want, atol=1e-5)
    assert got[:, 2 * n:3 * n].abs().sum() > 0  # the product block is not all zero


# --- deep runs: train, predict, evaluate, export ----------------------------------------------------------


def test_a_pair_run_predicts_from_a_table_and_from_tuples_and_evaluates(pair_run, pairs_csv, tmp_path):
    import ajuste

    pre = json.loads((pair_run / "preprocessing.json").read_text())
    assert pre["text_pair"] is True
    q = write_pairs(tmp_path / "q.tsv", [], header=())
    q.write_text("hypothesis\tpremise\nb c\ta d\nx\ty\n")  # its own column order: found by name
    rc, out, err = run_cli(["predict", pair_run, q])
    assert rc == 0, err
    assert "q.tsv:2" in out and "q.tsv:3" in out
    run = ajuste.load(pair_run)
    one = run.predict(("a d", "b c"))
    many = run.predict([("a d", "b c"), ("y", "x")])
    assert isinstance(many, list) and len(many) == 2 and one.label == many[0].label
    assert one.probabilities == pytest.approx(many[0].probabilities, abs=1e-5)
    own = run.evaluate()
    assert own["evaluated_on"].startswith("test split of")
    other = run.evaluate(pairs_csv)
    assert other["evaluated_on"] == str(pairs_csv) and 0.0 <= other["accuracy"] <= 1.0


def test_a_pair_run_refuses_single_texts_in_one_line(pair_run, tmp_path, capsys):
    import ajuste

    line = one_error_line(_cli_err(["predict", str(pair_run), "apple river stone"], capsys))
    assert "text-pair model (columns 'premise' and 'hypothesis')" in line and "single text" in line
    with pytest.raises(AjusteError, match="text-pair model"):
        ajuste.load(pair_run).predict("apple river stone")
    with pytest.raises(AjusteError, match="text-pair model"):
        ajuste.load(pair_run).predict(["apple", "river"])
    only = write_pairs(tmp_path / "only.csv", [("a b", "same")], header=("premise", "label"))
    line = one_error_line(_cli_err(["predict", str(pair_run), str(only)], capsys))
    assert "column 'hypothesis' not found in" in line and "premise, label" in line
    line = one_error_line(_cli_err(["evaluate", str(pair_run), str(only), "--text-col", "premise"], capsys))
    assert "text-pair model" in line


@pytest.mark.parametrize("strategy", ["linear-probe", "two-stage", "lora"])
def test_strategies_train_on_pairs(strategy, pairs_csv, tiny_bert_dir, tmp_path):
    out = tmp_path / "run"
    rc, _, err = run_cli(["train", pairs_csv, *PAIR, "--model", tiny_bert_dir, "--strategy", strategy, *FAST,
                          "--set", "data.fraction=0.5", "--out", out, "-q"])
    assert rc == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete"
    import ajuste

    assert ajuste.load(out).predict(("apple river", "river apple")).label in ("same", "diff")


def test_exports_carry_the_pair_encoding(pair_run, tmp_path):
    import ajuste

    run = ajuste.load(pair_run)
    for fmt in ("ajuste", "onnx", "torchscript", "hf"):
        target = run.export(fmt, tmp_path / fmt)  # each export is checked against the run's logits on pairs
        assert target.is_dir()
    pre = json.loads((tmp_path / "onnx" / "preprocessing.json").read_text())
    assert pre["text_pair"] is True and "token_type_ids" in pre["inputs"]
    from ajuste.export.common import probe_inputs

    probe = probe_inputs(run.loaded.backbone, run.loaded.preprocessing)
    assert int(probe["token_type_ids"].max()) == 1


def test_compare_runs_on_pairs(pairs_csv, tiny_bert_dir, tmp_path):
    import ajuste

    study = ajuste.compare(pairs_csv, model=str(tiny_bert_dir), strategies=["classical", "linear-probe"],
                           fractions=[1.0], seeds=1, out=tmp_path / "study", text_col="premise,hypothesis",
                           overrides=["strategy.head_epochs=1", "train.min_steps=0", "train.epochs=1"],
                           similarity=False, workers=1, progress=False)
    assert (tmp_path / "study" / "best_model").is_dir()
    assert len(study.results) >= 2


# --- bad input: one line each -----------------------------------------------------------------------------


def _cli_err(args: list[str], capsys) -> str:
    assert main(args) != 0
    return capsys.readouterr().err


def test_bad_pairs_are_one_line(pairs_csv, capsys):
    line = one_error_line(_cli_err(["train", str(pairs_csv), "--text-col", "premise,hypothesis_x"], capsys))
    assert "column 'hypothesis_x' not found in" in line and "premise, hypothesis, label" in line
    line = one_error_line(_cli_err(["train", str(pairs_csv), "--text-col", "premise,hypothesis,label"], capsys))
    assert "names 3 columns" in line
    line = one_error_line(_cli_err(["train", "digits", "--text-col", "premise,hypothesis"], capsys))
    assert "names a text pair" in line and "not a table" in line
    line = one_error_line(_cli_err(["train", str(pairs_csv), "--text-col", "premise,hypothesis",
                                    "--label-col", "premise"], capsys))
    assert "one side of the text pair" in line


def test_pairs_to_predict_are_read_by_load_texts(tmp_path):
    q = write_pairs(tmp_path / "q.jsonl", [], header=())
    q.write_text('{"premise": "a", "hypothesis": "b"}\n{"premise": "c"}\n{"premise": "d", "hypothesis": "e"}\n')
    texts, lines = load_texts(q, text_col="premise,hypothesis")
    assert texts == [("a", "b"), ("d", "e")] and lines == [1, 3]
    with pytest.raises(DataError, match="column 'x' not found"):
        load_texts(q, text_col="premise,x")
