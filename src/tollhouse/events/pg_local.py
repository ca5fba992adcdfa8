"""A private, throwaway PostgreSQL server (for the test suite and the benchmarks).

Runs Debian's PostgreSQL binaries (``/usr/lib/postgresql/<major>/bin``): ``initdb`` into a temporary
directory (trust authentication, superuser ``postgres``), then ``pg_ctl start`` listening on loopback at
the given port, with fsync off unless asked for. ``stop()`` shuts it down and deletes the directory.
PostgreSQL refuses to run as root: as root, the server runs as the ``postgres`` system user (else
``nobody``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

DEFAULT_BIN = Path("/usr/lib/postgresql/15/bin")


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL binaries are missing or the server did not start."""


class LocalPostgres:
    def __init__(self, port: int, bin_dir: Path = DEFAULT_BIN, fsync: bool = False) -> None:
        self.port = port
        self.bin_dir = bin_dir
        self.fsync = fsync
        self.dir = Path(tempfile.mkdtemp(prefix="tollhouse-pg-"))
        self._started = False
        self._user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self._user = pwd.getpwnam("postgres")
            except KeyError:
                self._user = pwd.getpwnam("nobody")
            os.chown(self.dir, self._user.pw_uid, self._user.pw_gid)

    @property
    def url(self) -> str:
        """The URL of the `postgres` database; `url_for(name)` for another one."""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, check: bool = True) -> None:
        uid, gid = (None, None) if self._user is None else (self._user.pw_uid, self._user.pw_gid)
        try:
            subprocess.run(args, check=check, capture_output=True, text=True, timeout=60, cwd=self.dir, user=uid,
                           group=gid)
        except subprocess.CalledProcessError as exc:
            raise PostgresUnavailable(f"{Path(args[0]).name} failed: {exc.stderr.strip() or exc.stdout.strip()}"
                                      ) from None

    def start(self) -> LocalPostgres:
        initdb = self.bin_dir / "initdb"
        if not initdb.exists():
            self.stop()
            raise PostgresUnavailable(
                f"{initdb} not found: PostgreSQL 15 is needed (Debian/Ubuntu: apt-get install postgresql-15; "
                "scripts/test installs it)")
        data = self.dir / "data"
        options = f"{'' if self.fsync else '-F '}-k {self.dir} -h 127.0.0.1 -p {self.port}"
        try:
            self._run(str(initdb), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
            self._started = True  # from here on, stop() must try pg_ctl stop
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(data), "-l", str(self.dir / "server.log"), "-w",
                      "-t", "30", "-o", options, "start")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._started:
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop",
                      check=False)
            self._started = False
        shutil.rmtree(self.dir, ignore_errors=True)
