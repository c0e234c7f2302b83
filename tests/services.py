"""Real services for the tests, each on 127.0.0.1, started by the test and stopped by pid (never `ray stop` or
`pkill`, which would stop other people's processes): an S3-compatible server (moto's standalone server), an
MLflow tracking server, and PostgreSQL for it. No test leaves a process behind: `stop_tree` reports survivors.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

BIN = Path(sys.executable).parent
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_tree(marker: str | None, extra: list | None = None) -> list:
    """Stop every process with an argument that contains `marker` (None: none), `extra`, and all their children;
    return the survivors."""
    import psutil

    def named(p) -> bool:
        try:
            return marker is not None and any(marker in a for a in p.cmdline())
        except psutil.Error:
            return False

    procs = {p for p in psutil.process_iter() if named(p)} | set(extra or [])
    for p in list(procs):
        try:
            procs.update(p.children(recursive=True))
        except psutil.Error:
            pass
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(list(procs), timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(alive, timeout=5)
    return [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


def wait_http(url: str, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.5)
        if proc.poll() is not None:
            said = proc.stderr.read()[-2000:] if proc.stderr else ""
            raise RuntimeError(f"{what} exited ({proc.returncode}): {said}")
    raise RuntimeError(f"{what} did not answer at {url} in {timeout:.0f} s")


class S3Server:
    """moto's S3 server on 127.0.0.1 (its objects live in its memory: SIGSTOP it, never kill it, to make it
    unreachable for a while). `uri(bucket/prefix)` is a store URI that reaches it."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.log = open(folder / "moto.log", "w")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_http(f"http://{self.endpoint}/", self.proc, "moto_server")

    def uri(self, path: str, **options: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in {"endpoint_override": self.endpoint, "scheme": "http",
                                                 **options}.items())
        return f"s3://{path}?{query}"

    def bucket(self, name: str) -> None:
        import pyarrow.fs as pafs

        pafs.S3FileSystem(endpoint_override=self.endpoint, scheme="http", allow_bucket_creation=True,
                          access_key=S3_ENV["AWS_ACCESS_KEY_ID"],
                          secret_key=S3_ENV["AWS_SECRET_ACCESS_KEY"]).create_dir(name)

    def stop(self) -> list:
        import psutil

        try:
            left = stop_tree(None, [psutil.Process(self.proc.pid)])
        except psutil.NoSuchProcess:
            left = []
        self.log.close()
        return left


@contextmanager
def s3_server(folder: Path, secret: str = S3_ENV["AWS_SECRET_ACCESS_KEY"]):
    """An S3 server for the duration, with credentials moto accepts in this process's environment."""
    env = {**S3_ENV, "AWS_SECRET_ACCESS_KEY": secret}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    server = S3Server(folder)
    try:
        yield server
    finally:
        left = server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        assert not left, "moto_server survived"


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server programs (Debian's postgresql package), if installed."""
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / "postgres").is_file():
            return folder
    found = shutil.which("postgres")
    return Path(found).parent if found else None


def as_postgres(cmd: list[str]) -> list[str]:
    """`cmd` as the postgres user when we are root: initdb and postgres refuse to run as root."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextmanager
def postgres_server():
    """A PostgreSQL server on 127.0.0.1 with trust authentication and a database `mlflow`; yields its SQLAlchemy
    URI (psycopg2). Its folder is a fresh one directly in the temp dir: the postgres user cannot enter pytest's
    (0700, root's)."""
    import tempfile

    pg = postgres_bin()
    if pg is None:
        raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run installs it)")
    folder = Path(tempfile.mkdtemp(prefix="harness-test-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    data, port = folder / "data", free_port()
    subprocess.run(as_postgres([str(pg / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres", "-E", "UTF8"]),
                   check=True, capture_output=True, timeout=120)
    proc = subprocess.Popen(as_postgres([str(pg / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
                                         "-k", str(folder)]), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.time() + 60
        while subprocess.run([str(pg / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                             capture_output=True).returncode != 0:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"postgres did not start: {proc.stderr.read()[-2000:] if proc.poll() else ''}")
            time.sleep(0.3)
        subprocess.run([str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow"],
                       check=True, capture_output=True, timeout=60)
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    finally:
        import psutil

        left = stop_tree(str(data), [psutil.Process(proc.pid)])
        shutil.rmtree(folder, ignore_errors=True)
        assert not left, "postgres processes survived"


@contextmanager
def mlflow_server(folder: Path, backend: str, artifacts: str, env: dict | None = None):
    """`mlflow server` on 127.0.0.1 with `backend` (a database URI) and artifacts proxied to `artifacts`; yields
    its address."""
    port = free_port()
    proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri", backend, "--artifacts-destination",
                             artifacts, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=open(folder / "mlflow.log", "w"),  # noqa: SIM115
                            env=env, cwd=folder)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{uri}/health", proc, f"mlflow server (log: {folder / 'mlflow.log'})")
        yield uri
    finally:
        import psutil

        assert not stop_tree(None, [psutil.Process(proc.pid)]), "mlflow server processes survived"
