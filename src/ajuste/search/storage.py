"""Where a study lives: a SQLite file (one machine) or PostgreSQL (parallel workers, several machines).

- ``check_reachable`` answers within seconds for a wrong host, port, database or password (the
  connection gets a timeout; nothing hangs for minutes) and names the URL, password hidden.
- ``open_storage`` builds an Optuna ``RDBStorage`` with a heartbeat: a trial whose worker died is marked
  failed after ``GRACE_SECONDS`` and its slot of the trial budget is run again.
- ``StudyLock`` serialises the few milliseconds in which a worker creates or loads the study and claims
  a trial slot (PostgreSQL advisory lock; a ``flock`` next to a SQLite file), so workers sharing one
  study run exactly the requested number of trials: no more, none lost.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

from ajuste.errors import AjusteError
from ajuste.search.results import ATTR_DATA, best_config, best_trial_or_none, study_metric

CONNECT_TIMEOUT = 5  # seconds, for PostgreSQL connections
SQLITE_BUSY_TIMEOUT = 60  # seconds a SQLite writer waits for the file lock (optuna #820)
HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 60
SCHEMA_RACE_RETRIES = 3  # workers starting together on a new database race to create its schema


def scheme(url: str) -> str:
    head = url.split("://", 1)[0] if "://" in url else ""
    return head.split("+", 1)[0].lower()


def default_storage(out: Path) -> str:
    return f"sqlite:///{(Path(out) / 'study.db').resolve()}"


def redact(url: str) -> str:
    """The URL with its password replaced by ***, for messages and files."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a malformed URL is reported by check_reachable
        return url


def dashboard_command(url: str) -> str:
    """How to open the study in optuna-dashboard (password hidden; psycopg2 named for PostgreSQL)."""
    if url.split("://", 1)[0].lower() in ("postgresql", "postgres"):
        url = "postgresql+psycopg2://" + url.split("://", 1)[1]
    return f"optuna-dashboard {redact(url)}"


def _parse(url: str):
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url)
    except (ArgumentError, ValueError):
        raise AjusteError(f"--storage {url!r} is not a database URL: use sqlite:///path/study.db or "
                          f"postgresql://user[:password]@host[:port]/database") from None


def check_reachable(url: str) -> None:
    """Fail fast, in one line, when the storage cannot be used."""
    kind = scheme(url)
    if kind == "sqlite":
        u = _parse(url)
        db = u.database
        if not db or db == ":memory:":
            raise AjusteError(f"--storage {url}: an in-memory SQLite study is lost at exit; give a file, "
                              f"e.g. sqlite:///runs/study.db")
        parent = Path(db).expanduser().resolve().parent
        if not parent.is_dir():
            raise AjusteError(f"--storage {url}: folder {parent} does not exist")
        if not os.access(parent, os.W_OK):
            raise AjusteError(f"--storage {url}: folder {parent} is not writable")
        return
    if kind == "postgresql":
        conn = _pg_connect(url)
        conn.close()
        return
    raise AjusteError(f"--storage {redact(url)}: unsupported database {kind or url!r}; use "
                      f"sqlite:///path/study.db (one machine) or postgresql://user@host/db (parallel workers)")


def _pg_connect(url: str):
    try:
        import psycopg2
    except ImportError:
        raise AjusteError("a postgresql:// storage needs psycopg2: pip install psycopg2-binary") from None
    u = _parse(url)
    query = {k: (v[0] if isinstance(v, tuple) else v) for k, v in u.query.items()}
    query.setdefault("connect_timeout", str(CONNECT_TIMEOUT))
    try:
        return psycopg2.connect(host=u.host or None, port=u.port or None, user=u.username or None,
                                password=u.password or None, dbname=u.database or None, **query)
    except psycopg2.Error as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise AjusteError(f"cannot reach storage {redact(url)}: {reason}") from None


def open_storage(url: str, *, heartbeat: bool = True) -> Any:
    """An optuna RDBStorage for ``url`` (schema created on first use)."""
    import optuna

    kind = scheme(url)
    engine_kwargs: dict[str, Any] = {}
    if kind == "sqlite":
        engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT}
    elif kind == "postgresql":
        engine_kwargs["pool_pre_ping"] = True
        if "connect_timeout" not in url:
            engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT}
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; ajuste ships psycopg2.
        if url.split("://", 1)[0].lower() in ("postgresql", "postgres"):
            url = "postgresql+psycopg2://" + url.split("://", 1)[1]
    kw: dict[str, Any] = {}
    if heartbeat:
        retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or \
            optuna.storages.RetryFailedTrialCallback
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental-feature warnings
            # A trial whose worker died is re-queued (WAITING, same params) up to twice.
            # Optuna < 4.9 names the callback failed_trial_callback.
            params = inspect.signature(optuna.storages.RDBStorage).parameters
            name = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params \
                else "failed_trial_callback"
            kw = {"heartbeat_interval": HEARTBEAT_SECONDS, "grace_period": GRACE_SECONDS, name: retry(max_retry=2)}
    for attempt in range(SCHEMA_RACE_RETRIES + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kw)
        except Exception as exc:  # sqlalchemy/optuna raise many types for a bad database
            # Workers started together on a new database both create the schema: the loser's INSERT of the
            # schema version fails (UNIQUE / duplicate key / already exists). By then the schema is there.
            if attempt < SCHEMA_RACE_RETRIES and _lost_schema_race(exc):
                time.sleep(0.2 * (attempt + 1))
                continue
            reason = " ".join(str(exc).split())[:300]
            raise AjusteError(f"cannot open storage {redact(url)}: {reason}") from None
    raise AssertionError("unreachable")


def _lost_schema_race(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(s in text for s in ("unique constraint", "duplicate key", "already exists"))


def lock_key(study_name: str) -> int:
    """A signed 64-bit key for pg_advisory_lock, stable across machines."""
    digest = hashlib.blake2b(f"ajuste-study:{study_name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class StudyLock:
    """Re-entrant-free mutual exclusion between the workers of one study.

    PostgreSQL: a session advisory lock on its own connection (released by the server if the worker
    dies). SQLite: ``flock`` on ``<db>.lock`` (released by the kernel if the worker dies). Other
    storages: no lock (then concurrent workers may overshoot the budget by a trial or two).
    """

    def __init__(self, url: str, study_name: str) -> None:
        self.kind = scheme(url)
        self.key = lock_key(study_name)
        self._conn = None
        self._fh = None
        self.held = False
        if self.kind == "postgresql":
            self._conn = _pg_connect(url)
            self._conn.autocommit = True
        elif self.kind == "sqlite":
            db = Path(_parse(url).database).expanduser().resolve()
            self._fh = open(f"{db}.lock", "a+")  # noqa: SIM115 - held for the worker's lifetime

    def acquire(self) -> None:
        if self.held:
            return
        if self._conn is not None:
            with self._conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_lock(%s)", (self.key,))
        elif self._fh is not None:
            import fcntl

            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX)
        self.held = True

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        if self._conn is not None:
            with self._conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
        elif self._fh is not None:
            import fcntl

            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)

    @contextlib.contextmanager
    def hold(self):
        self.acquire()
        try:
            yield self
        finally:
            self.release()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.release()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "StudyLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# -- finding a finished study again (ajuste train --from-study) ---------------------------------------


def resolve_study_ref(ref: str) -> dict[str, Any]:
    """``ref`` → the best trial's run config as a dict, plus where it came from.

    ``ref`` is a tune output directory (its best.json), a best.json file, or ``STORAGE_URL#STUDY_NAME``
    (``#STUDY_NAME`` may be left out when the storage holds one study).
    """
    p = Path(ref).expanduser()
    if "://" not in ref:
        best_file = p / "best.json" if p.is_dir() else p
        if not p.exists():
            raise AjusteError(f"--from-study {ref} does not exist; give an `ajuste tune` output directory or "
                              f"STORAGE_URL#STUDY_NAME")
        if not best_file.is_file():
            raise AjusteError(f"--from-study {ref}: no best.json there; give an `ajuste tune` output "
                              f"directory or STORAGE_URL#STUDY_NAME")
        best = json.loads(best_file.read_text(encoding="utf-8"))
        if best.get("config") is None:
            raise AjusteError(f"--from-study {ref}: the study has no finished trial yet")
        return {"config": best["config"], "study": best.get("study"), "number": best.get("number"),
                "value": best.get("value"), "metric": best.get("metric"), "data_digest": best.get("data_digest")}
    url, _, name = ref.partition("#")
    check_reachable(url)
    import optuna

    storage = open_storage(url, heartbeat=False)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if not name:
        if len(names) != 1:
            raise AjusteError(f"--from-study {redact(url)} holds {len(names)} studies"
                              f"{' (' + ', '.join(names) + ')' if names else ''}; add #STUDY_NAME")
        name = names[0]
    if name not in names:
        raise AjusteError(f"--from-study: no study {name!r} in {redact(url)} (it has: {', '.join(names) or 'none'})")
    study = optuna.load_study(study_name=name, storage=storage)
    best = best_trial_or_none(study)
    if best is None:
        raise AjusteError(f"--from-study: study {name!r} has no finished trial yet")
    return {"config": best_config(study, best).to_dict(), "study": name, "number": best.number,
            "value": best.value, "metric": study_metric(study), "data_digest": study.user_attrs.get(ATTR_DATA)}

