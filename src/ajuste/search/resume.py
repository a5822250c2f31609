"""Creating a study, or joining one that exists (a resume, or another worker on a shared storage).

The first worker records on the study what it was asked for: the search space, the fixed config, the metric
and the data's digest. A later one may add trials only when it asks for the same: trials run with another space,
other fixed settings, another metric or on other examples cannot be compared with the study's.
"""

from __future__ import annotations

from typing import Any

from ajuste.config import RunConfig
from ajuste.errors import AjusteError
from ajuste.search.results import ATTR_CONFIG, ATTR_DATA, ATTR_METRIC, ATTR_SPACE
from ajuste.search.space import SearchSpace

# Fields that do not change what a trial computes: a resumed study may differ in these.
_IGNORED_FIELDS = {"train.threads", "train.log_to"}


def create_or_load(storage: Any, name: str, direction: str) -> tuple[Any, bool]:
    """The study ``name`` in ``storage``, and whether this call created it."""
    import optuna

    try:
        return optuna.create_study(study_name=name, storage=storage, direction=direction), True
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(study_name=name, storage=storage), False


def record_request(study: Any, *, space: SearchSpace, cfg: RunConfig, metric: str, digest: str) -> None:
    """What a new study was created for, for every later worker to check against."""
    study.set_user_attr(ATTR_SPACE, space.to_dict())
    study.set_user_attr(ATTR_CONFIG, cfg.to_dict())
    study.set_user_attr(ATTR_METRIC, metric)
    study.set_user_attr(ATTR_DATA, digest)


def check_same_data(study: Any, name: str, where: str, digest: str, source: Any) -> None:
    """Trials scored on other examples cannot be compared with these: refuse to add to such a study."""
    stored = study.user_attrs.get(ATTR_DATA)
    if stored is not None and stored != digest:
        raise AjusteError(f"study {name} in {where} was started on other data: {source} changed since (its "
                          f"examples differ, not only their order); restore the data, or start another study "
                          f"(--study-name or another --out)")


def check_same_study(study: Any, name: str, where: str, space: SearchSpace, cfg: RunConfig, metric: str) -> None:
    attrs = study.user_attrs
    if ATTR_SPACE not in attrs or ATTR_CONFIG not in attrs:
        raise AjusteError(f"study {name!r} in {where} was not created by `ajuste tune`; use another --study-name")
    stored_metric = attrs.get(ATTR_METRIC, "val_accuracy")
    if stored_metric != metric:
        raise AjusteError(f"study {name!r} optimises {stored_metric}, not {metric}: resume with "
                          f"--metric {stored_metric}, or use another --study-name")
    stored_space = SearchSpace.from_mapping(attrs[ATTR_SPACE], where=f"study {name}")
    if stored_space != space:
        raise AjusteError(f"refusing to resume study {name!r} with a different search space "
                          f"({stored_space.diff(space)}); use the same --space and strategy, or another "
                          f"--study-name")
    old = _comparable_config(RunConfig.from_dict(attrs[ATTR_CONFIG], where=f"study {name}"))
    diff = _dict_diff(old, _comparable_config(cfg))
    if diff:
        raise AjusteError(f"refusing to resume study {name!r} with different fixed settings "
                          f"({'; '.join(diff)}); use the same options, or another --study-name")


def _comparable_config(cfg: RunConfig) -> dict[str, Any]:
    raw = cfg.to_dict()
    for key in _IGNORED_FIELDS:
        section, leaf = key.split(".")
        raw.get(section, {}).pop(leaf, None)
    return raw


def _dict_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) or isinstance(vb, dict):
            out += _dict_diff(va or {}, vb or {}, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} → {vb!r}")
    return out
