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


def stop_tree(marker: str, extra: list | None = None) -> list:
    """Stop every process whose command line names `marker`, their children, and `extra`; return survivors."""
    import psutil

    def named(p) -> bool:
        try:
            return any(marker in a for a in p.cmdline())
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
            left = stop_tree(f"-p {self.port}", [psutil.Process(self.proc.pid)])
        except psutil.NoSuchProcess:
            left = []
        self.log.close()
        return left


@contextmanager
def s3_server(folder: Path):
    """An S3 server for the duration, with the credentials moto accepts in this process's environment."""
    saved = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(S3_ENV)
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
