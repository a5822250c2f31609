"""What `train`, `evaluate` and `predict` print, for each task: a classifier's accuracy, per-class table and
confusion matrix; a multi-label model's mAP, F1 and per-label thresholds; a regression model's RMSE, MAE, R²."""

from __future__ import annotations

from typing import Any

from rich.markup import escape


def _esc(value: Any) -> str:
    return escape(str(value))


def run_result(con: Any, s: dict, w: Any, run_dir: Any) -> None:
    """What a finished run scored, where it was saved."""
    from ajuste.metrics import label_of

    avg = s.get("averaged")
    kept = (f"weights averaged over epochs {avg['epochs'][0]}-{avg['epochs'][1]}/{s['epochs']}"
            if avg and avg["kept"] else f"best epoch {s['best_epoch']}/{s['epochs']}")
    task = s.get("task", "classification")
    test = s.get("test", {})
    if task == "regression":
        scores = f"test RMSE {test['rmse']:.4g}  MAE {test['mae']:.4g}  R² {test['r2']:.4f}  "
    elif task == "multilabel":
        scores = f"test mAP {test['map']:.4f}  micro-F1 {test['micro_f1']:.4f}  macro-F1 {test['macro_f1']:.4f}  "
    else:
        first = "" if s.get("metric") in (None, "accuracy", "loss", "macro_f1") else \
            f"test {label_of(s['metric'])} {s['test_score']:.4f}  "
        scores = f"{first}test accuracy {s['test_accuracy']:.4f}  macro-F1 {s['test_macro_f1']:.4f}  "
    con.print(f"{scores}({s['n_test']} test examples)  {kept}  "
              f"train {s['train_seconds']:.0f}s  trainable {s['trainable_params']:,}/{s['total_params']:,} params",
              highlight=False)
    c = s.get("calibration")
    if c and "test_ece_after" in c:
        con.print(f"calibrated: T = {c['temperature']:.3g} (fitted on {c['n_val']} validation examples); test ECE "
                  f"{c['test_ece_before']:.4f} -> {c['test_ece_after']:.4f}", highlight=False)
    if w.active:
        con.print(f"data-parallel: {w.size} workers ({s['distributed']['backend']})")
    con.print(f"run saved in {_esc(run_dir)}")


def evaluation(con: Any, m: dict) -> None:
    """`ajuste evaluate`'s report: the run's metric first, then the task's other figures and tables."""
    from rich.table import Table

    from ajuste.metrics import ordered_metrics

    con.print(f"evaluated on {_esc(m['evaluated_on'])} ({m['n']} examples)")
    for key, label, value in ordered_metrics(m, m.get("metric", "accuracy")):
        con.print(f"{label} {value:.4f}" + ("  (the run's metric, train.monitor)" if key == m.get("metric") else ""),
                  highlight=False)
    if m.get("task") == "regression":
        return
    if m.get("task") == "multilabel":
        con.print(f"exact match (every label right) {m['exact_match']:.4f}", highlight=False)
        t = Table(title="per label (decided at its threshold, tuned on validation)")
        for col in ("label", "threshold", "AP", "precision", "recall", "f1", "support"):
            t.add_column(col, justify="left" if col == "label" else "right")
        for r in m["per_label"]:
            t.add_row(_esc(r["label"]), f"{r['threshold']:.3f}", f"{r['average_precision']:.3f}",
                      f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", str(r["support"]))
        con.print(t)
        return
    _calibration(con, m["calibration"])
    t = Table(title="per class")
    for col in ("class", "precision", "recall", "f1", "support"):
        t.add_column(col, justify="left" if col == "class" else "right")
    for r in m["per_class"]:
        t.add_row(_esc(r["class"]), f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", str(r["support"]))
    con.print(t)
    classes = [r["class"] for r in m["per_class"]]
    cm = Table(title="confusion matrix (rows: true, columns: predicted)")
    cm.add_column("")
    for c in classes:
        cm.add_column(_esc(c[:12]), justify="right")
    for c, row in zip(classes, m["confusion"]):
        cm.add_row(_esc(c[:20]), *[str(v) for v in row])
    con.print(cm)


def _calibration(con: Any, c: dict) -> None:
    how = f"top-label, {c['ece_bins']} equal-width bins"
    if c["temperature"] != 1.0:
        con.print(f"ECE {c['ece_after']:.4f} after temperature scaling (T = {c['temperature']:.4g}), "
                  f"{c['ece_before']:.4f} before ({how}); NLL {c['nll_after']:.4f}, before {c['nll_before']:.4f}",
                  highlight=False)
    else:
        con.print(f"ECE {c['ece_before']:.4f} ({how}; not calibrated: T = 1); NLL {c['nll_before']:.4f}",
                  highlight=False)


def prediction_table(rows: list[dict]) -> tuple[list[str], list[dict[str, str]]]:
    """(columns, rows as text) of predictions for a CSV file or the terminal: input, label, probability; multi-label:
    input, the chosen labels ('|'-joined) and each label's probability; regression: input, value."""
    if rows and "value" in rows[0]:
        return ["input", "value"], [{"input": r["input"], "value": f"{r['value']:.6g}"} for r in rows]
    if rows and "labels" in rows[0]:
        names = list(rows[0]["probabilities"])
        return (["input", "labels", *names],
                [{"input": r["input"], "labels": "|".join(r["labels"]),
                  **{n: f"{r['probabilities'][n]:.4f}" for n in names}} for r in rows])
    return ["input", "label", "probability"], [{**r, "probability": f"{r['probability']:.4f}"} for r in rows]
