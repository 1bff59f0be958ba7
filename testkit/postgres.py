"""A real PostgreSQL server for tests, from the `pgserver` wheel (binaries inside a PyPI package).

It listens on 127.0.0.1 with password authentication (scram-sha-256), so a wrong password is
refused and tests can check that the password never leaks. `stop()` and `start()` take it down
and bring it back on the same port and data (database outage tests).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

from testkit.servers import free_port

USER = "lora"
PASSWORD = "pw-Secr3t-do-not-log"


class Postgres:
    def __init__(self) -> None:
        import pgserver
        from pgserver import _commands

        self._pg_ctl = _commands.pg_ctl
        # as root, the server runs as the system user `pgserver`, which must reach its data folder:
        # a folder of its own under /tmp (pytest's temporary folders are private to root)
        self.base = Path(tempfile.mkdtemp(prefix="lora-platform-pg-"))
        self.base.chmod(0o755)
        self.pgdata = self.base / "pgdata"
        self.pgdata.mkdir()
        server = pgserver.get_server(self.pgdata, cleanup_mode=None)  # initdb, start on a unix socket
        self.system_user = server.system_user
        server.psql(f"CREATE ROLE {USER} LOGIN SUPERUSER PASSWORD '{PASSWORD}';")
        self._pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=self.system_user)
        hba = self.pgdata / "pg_hba.conf"
        hba.write_text("local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
        self.port = free_port()
        self.socket_dir = self.pgdata
        self.start()

    @property
    def running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists()

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.socket_dir} -c max_connections=200 -c fsync=off"
        log = self.pgdata / "server.log"
        self._pg_ctl(
            ["-w", "-o", options, "-l", str(log), "start"], pgdata=self.pgdata, user=self.system_user
        )

    def stop(self) -> None:
        self._pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=self.pgdata, user=self.system_user)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def close(self) -> None:
        if self.running:
            self._pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=self.pgdata, user=self.system_user)
        shutil.rmtree(self.base, ignore_errors=True)


if __name__ == "__main__":  # a manual check: start, create a database, stop
    import time

    t0 = time.monotonic()
    pg = Postgres()
    print("up in", round(time.monotonic() - t0, 2), "s:", pg.new_database().replace(PASSWORD, "***"))
    pg.stop()
    pg.start()
    print("restarted:", pg.new_database().replace(PASSWORD, "***"), os.getpid())
    pg.close()
