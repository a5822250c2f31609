"""`ajuste rank` and its transferability estimators. No network: the offline EfficientNet-Lites on digits, the
tiny BERT folder for text, and synthetic features whose answer is known."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ajuste.cli.main import main
from ajuste.study import transferability as tr
from ajuste.study.similarity import logme

N, D, C = 400, 48, 4


def _features(separated: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features and labels: class means 3 units apart plus unit noise, or pure noise."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(C), N // C)
    noise = rng.normal(size=(N, D))
    if not separated:
        return noise, y
    return noise + 3.0 * rng.normal(size=(C, D))[y] / np.sqrt(D) * 4, y


def _source_logits(f: np.ndarray, seed: int = 1) -> np.ndarray:
    """A fixed random 20-class "source head" on the features."""
    return f @ np.random.default_rng(seed).normal(size=(f.shape[1], 20))


LABEL_ONLY = {"logme": logme, "hscore": tr.hscore,
              "hscore-plain": lambda f, y: tr.hscore(f, y, shrinkage=False), "nleep": tr.nleep}
WITH_HEAD = {"leep": lambda f, y: tr.leep(tr.softmax(_source_logits(f)), y),
             "nce": lambda f, y: tr.nce(_source_logits(f).argmax(1), y)}


@pytest.mark.parametrize("name", [*LABEL_ONLY, *WITH_HEAD])
def test_features_that_separate_the_classes_score_higher_than_noise(name):
    score = {**LABEL_ONLY, **WITH_HEAD}[name]
    good, y = _features(True)
    noise, _ = _features(False)
    assert score(good, y) > score(noise, y) + 0.1


@pytest.mark.parametrize("shrinkage", [True, False])
def test_hscore_is_unchanged_by_a_permutation_of_the_features(shrinkage):
    f, y = _features(True)
    perm = np.random.default_rng(3).permutation(D)
    assert tr.hscore(f[:, perm], y, shrinkage=shrinkage) == pytest.approx(tr.hscore(f, y, shrinkage=shrinkage))


def test_plain_hscore_is_unchanged_by_an_invertible_linear_map_and_bounded_by_classes_minus_one():
    f, y = _features(True)
    a = np.random.default_rng(4).normal(size=(D, D)) + 3 * np.eye(D)
    h = tr.hscore(f, y, shrinkage=False)
    assert tr.hscore(f @ a, y, shrinkage=False) == pytest.approx(h, rel=1e-6)
    assert 0 < h <= C - 1 + 1e-9
    assert tr.hscore(f, y + 7, shrinkage=False) == pytest.approx(h)  # any integer labels


def test_leep_and_nce_reach_zero_when_the_source_labels_determine_the_target():
    y = np.repeat(np.arange(3), 10)
    z = y * 2 + np.tile([0, 1], 15)  # two source classes per target class
    assert tr.nce(z, y) == pytest.approx(0.0)
    assert tr.leep(np.eye(6)[z], y) == pytest.approx(0.0, abs=1e-9)
    assert tr.nce(np.zeros_like(y), y) == pytest.approx(-np.log(3))  # one source class: H(Y) left
    assert tr.leep(np.full((30, 6), 1 / 6), y) == pytest.approx(-np.log(3))


def test_nleep_is_unchanged_by_a_permutation_of_the_features():
    f, y = _features(True)
    perm = np.random.default_rng(5).permutation(D)
    assert tr.nleep(f[:, perm], y) == pytest.approx(tr.nleep(f, y), abs=1e-6)


def test_auto_candidates_offline_are_the_installed_zoo_models_and_a_note_says_why():
    from ajuste.study.rank import HUB_CANDIDATES, hub_reachable, resolve_candidates

    names, notes = resolve_candidates("auto", "image", reachable=lambda: (False, "no route to host"))
    assert names and all(n.startswith("efficientnet_lite") for n in names)
    assert len(notes) == 1 and "no route to host" in notes[0] and HUB_CANDIDATES["image"][0] in notes[0]
    online, _ = resolve_candidates("auto", "text", reachable=lambda: (True, ""))
    assert online[0] == "minilm-l6"  # the zoo first; its hub twin is not scored twice
    assert "sentence-transformers/all-MiniLM-L6-v2" not in online and "hf:bert-base-uncased" in online
    assert hub_reachable() == (False, "HF_HUB_OFFLINE is set")  # conftest sets it: answered without a lookup


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("error:")
    return lines[0]


def test_an_unknown_model_name_is_one_line_before_anything_is_built(capsys, tmp_path):
    assert main(["rank", "digits", "--models", "efficientnet_lite0,efficientnet_lyte9", "-o",
                 str(tmp_path / "r.json")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "unknown model 'efficientnet_lyte9'" in line and "did you mean efficientnet_lite" in line
    assert main(["rank", "digits", "--models", "minilm-l6"]) == 2
    assert "text model" in _one_error_line(capsys.readouterr().err)
    assert main(["rank", "digits", "--max-seconds", "0"]) == 2
    assert "--max-seconds 0" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "r.json").exists()


def test_rank_on_digits_prints_a_table_and_writes_json(capsys, tmp_path):
    """Two offline EfficientNet-Lites (with their ImageNet head: LEEP and NCE too) and a hub model that cannot
    load offline, reported as skipped while the others go on."""
    out = tmp_path / "digits-rank.json"
    assert main(["rank", "digits", "--models", "efficientnet_lite0,efficientnet_lite1,timm/resnet18",
                 "--max-examples", "200", "--max-seconds", "1", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    result = json.loads(out.read_text())
    # 1 s leaves the floor of the sample on this kind of machine (a fast one may score more, never past the max)
    assert 100 <= result["examples"] <= 200 and result["classes"] == 10
    ok = [r for r in result["rows"] if r["status"] == "ok"]
    assert sorted(r["model"] for r in ok) == ["efficientnet_lite0", "efficientnet_lite1"]
    for r in ok:
        assert set(r["scores"]) == {"logme", "hscore", "nleep", "leep", "nce"}
        assert sorted(o["ranks"]["logme"] for o in ok) == [1, 2]
        assert r["params_m"] > 3 and r["examples_per_s"] > 0 and r["mflops"] > 0
    skipped = result["rows"][-1]
    assert skipped["model"] == "timm/resnet18" and skipped["status"] == "skipped" and skipped["reason"]
    table = [ln for ln in text.splitlines() if ln.strip().startswith(("efficientnet_lite", "timm/resnet18"))]
    assert len(table) == 3 and "skipped" in table[-1]
    assert all("LogME" in text and f"({r['ranks']['logme']})" in text for r in ok)
    assert any(ln.startswith("skipped timm/resnet18: ") for ln in text.splitlines())


def test_rank_on_text_scores_a_model_without_a_source_head(capsys, tmp_path, tiny_bert_dir):
    rows = ["text,label"] + [f"\"{w} {i}\",{lab}" for i in range(40)
                             for w, lab in (("great film", "pos"), ("awful film", "neg"))]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "t-rank.json"
    assert main(["rank", str(tmp_path / "t.csv"), "--models", str(tiny_bert_dir), "-o", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["status"] == "ok" and set(row["scores"]) == {"logme", "hscore", "nleep"}
    assert "NCE" not in capsys.readouterr().out


def test_model_names_are_checked_without_building_anything():
    from ajuste.errors import AjusteError
    from ajuste.study.rank import check_model_name

    for name in ("timm:resnet50", "timm/resnet50", "resnet50", "hf:bert-base-uncased", "org/model",
                 "efficientnet_lite0"):
        check_model_name(name, "image")
    with pytest.raises(AjusteError, match=r"unknown model 'timm/resnet5O' in --models: did you mean timm/resnet50"):
        check_model_name("timm/resnet5O", "image")


def test_samples_are_stratified_and_nested_so_a_pass_can_stop_early():
    """rank keeps the pilot's features and may shrink the sample after a pass: both need smaller draws to lie
    inside larger ones, with the class shares kept."""
    from ajuste.study.rank import stratified

    labels = np.repeat([0, 1, 2], [600, 300, 100])
    pool = np.arange(0, 1000, 1)
    draws = [stratified(pool, labels, n, 0) for n in (32, 100, 148, 400)]
    for small, large in zip(draws, draws[1:]):
        assert set(small) <= set(large)
    assert np.bincount(labels[draws[-1]]).tolist() == [240, 120, 40]
    assert len(stratified(pool[:5], labels, 100, 0)) == 5  # a pool smaller than the draw: all of it
