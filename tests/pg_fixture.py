"""A throwaway PostgreSQL server for tests: initdb + pg_ctl on a free loopback port, removed afterwards.

Skips (does not fail) when the PostgreSQL server binaries or psycopg2 are absent. PostgreSQL refuses to
run as root: under root the cluster belongs to the ``postgres`` user (Debian's package creates it) and
its commands run through ``runuser``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


def pg_bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
                   if p.split("/")[4].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _runner() -> tuple[list[str], str | None]:
    """Command prefix to run PostgreSQL tools as a non-root user, and that user's name (None: ourselves)."""
    if os.geteuid() != 0:
        return [], None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no 'postgres' user to own a PostgreSQL cluster")
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--"], "postgres"
    return ["su", "postgres", "-s", "/bin/sh", "-c"], "postgres"


def _run(prefix: list[str], args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    if prefix and prefix[0] == "su":
        import shlex

        cmd = prefix + [" ".join(shlex.quote(a) for a in args)]
    else:
        cmd = prefix + args
    # cwd: a folder the postgres user can enter (it may not enter the repository's).
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.fixture(scope="session")
def postgres_url():
    bindir = pg_bin_dir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; apt-get install postgresql")
    pytest.importorskip("psycopg2")
    import psycopg2

    prefix, user = _runner()
    base = Path(tempfile.mkdtemp(prefix="ajuste-pg-"))
    if user:
        ent = pwd.getpwnam(user)
        os.chown(base, ent.pw_uid, ent.pw_gid)
    data = base / "data"
    started = False
    try:
        r = _run(prefix, [str(bindir / "initdb"), "-D", str(data), "-U", "ajuste", "-A", "trust", "-E", "UTF8",
                          "--no-sync"], base)
        if r.returncode != 0:
            pytest.fail(f"initdb failed: {r.stderr.strip()[-500:]}")
        port = None
        for _ in range(3):  # a free port can be taken between the check and the start
            port = _free_port()
            opts = (f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off "
                    f"-c synchronous_commit=off -c full_page_writes=off -c max_connections=40")
            r = _run(prefix, [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-t", "60",
                              "-o", opts, "start"], base)
            if r.returncode == 0:
                started = True
                break
        if not started:
            log = (base / "log").read_text(errors="replace")[-800:] if (base / "log").exists() else ""
            pytest.fail(f"pg_ctl start failed: {r.stderr.strip()[-300:]} {log}")
        deadline = time.time() + 30
        while True:
            try:
                conn = psycopg2.connect(host="127.0.0.1", port=port, user="ajuste", dbname="postgres",
                                        connect_timeout=5)
                break
            except psycopg2.OperationalError:
                if time.time() > deadline:
                    raise
                time.sleep(0.3)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE tune")
        conn.close()
        yield f"postgresql://ajuste@127.0.0.1:{port}/tune"
    finally:
        if started:
            _run(prefix, [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], base)
        shutil.rmtree(base, ignore_errors=True)
