"""Files by location: a local path, or an object in an object store (`s3://BUCKET/KEY`, `gs://BUCKET/KEY`).

    root = "s3://runs/default?endpoint_override=127.0.0.1:9000&scheme=http"
    data = read_bytes(join(root, "store", "pretrain", key, "result.json"))

One opener for every reader and writer that may sit on a cluster whose nodes share no disk: the artifact store,
Ray Tune's storage, prepared datasets and their shards. Remote locations go through pyarrow's filesystems, the ones
Ray Tune itself uses, so one URI means the same place to both. A URI's query carries the options of its store,
never its credentials, which come from the store's own SDK environment (AWS_ACCESS_KEY_ID and friends,
~/.aws/config, an instance role; GOOGLE_APPLICATION_CREDENTIALS): a URI with `user:secret@` or a key in its query
is refused, so no credential can reach a node record, an MLflow param or a log line. S3 options (docs/cluster.md):

- `endpoint_override=HOST:PORT` and `scheme=http`: an S3-compatible server (pyarrow ignores AWS_ENDPOINT_URL);
- `region=...`, `allow_bucket_creation=true`;
- `connect_timeout=S`, `request_timeout=S`, `retries=N`: how long a request may hang and how often it is retried
  before the caller gets an error naming the store (defaults: the AWS SDK's, 3 attempts).

`gs://` goes through the same code (pyarrow's GcsFileSystem) but is untested here: no emulator runs on this
machine. A local path (or `file://`) is an ordinary path, written through a temporary name and renamed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from workloads.errors import ConfigError, StorageError
from workloads.files import atomic_write

REMOTE = ("s3", "gs", "gcs")
S3_OPTIONS = {"endpoint_override": str, "scheme": str, "region": str, "allow_bucket_creation": bool,
              "connect_timeout": float, "request_timeout": float, "retries": int}
CHUNK = 8 << 20  # bytes per read or write when a file is streamed to or from a store
SECRET_OPTIONS = {"access_key", "secret_key", "session_token", "aws_access_key_id", "aws_secret_access_key"}


def is_remote(location: str | Path) -> bool:
    return isinstance(location, str) and urlsplit(location).scheme in REMOTE


def check(location: str, what: str) -> str:
    """`location` if this module can open it; else a ConfigError that names `what` and the fix."""
    parts = urlsplit(location)
    if "://" not in location or parts.scheme == "file":
        return location
    if parts.scheme not in REMOTE:
        raise ConfigError(f"{what}: {redact(location)}: unknown scheme {parts.scheme!r}; use a local path, s3:// or "
                          "gs://")
    if parts.username or parts.password:
        raise ConfigError(f"{what}: {redact(location)} carries credentials in its URI; remove them and give them the "
                          "way the store's SDK reads them (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or ~/.aws for "
                          "S3, GOOGLE_APPLICATION_CREDENTIALS for GCS) on every node")
    if not parts.netloc:
        raise ConfigError(f"{what}: {redact(location)} names no bucket (expected {parts.scheme}://BUCKET/PREFIX)")
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    secret = SECRET_OPTIONS & {k.lower() for k in options}
    if secret:
        raise ConfigError(f"{what}: {redact(location)} carries credentials ({', '.join(sorted(secret))}) in its "
                          "query; give them through the store's SDK environment on every node instead")
    if parts.scheme == "s3":
        unknown = sorted(set(options) - set(S3_OPTIONS))
        if unknown:
            raise ConfigError(f"{what}: {redact(location)}: unknown S3 option(s) {', '.join(unknown)}; known: "
                              f"{', '.join(S3_OPTIONS)}")
        for key, value in options.items():
            try:
                _option(key, value)
            except ValueError:
                raise ConfigError(f"{what}: {redact(location)}: {key}={value!r} is not "
                                  f"{'a number' if S3_OPTIONS[key] in (int, float) else 'valid'}") from None
    return location


def _option(key: str, value: str) -> object:
    kind = S3_OPTIONS[key]
    if kind is bool:
        if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError(value)
        return value.lower() in ("1", "true", "yes")
    return kind(value)


def redact(location: str) -> str:
    """`location` with any `user:secret@` cut out, fit for an error message."""
    parts = urlsplit(location)
    if parts.username or parts.password:
        return parts._replace(netloc=f"***@{parts.hostname or ''}").geturl()
    return location


def join(location: str | Path, *names: str) -> str:
    """`location` / each of `names`, keeping a URI's query (its store's options) at the end."""
    if not is_remote(location):
        return str(Path(str(location).removeprefix("file://"), *names))
    parts = urlsplit(str(location))
    path = "/".join([parts.path.rstrip("/"), *[n.strip("/") for n in names]])
    return parts._replace(path=path).geturl()


def display(location: str | Path) -> str:
    """`location` without its query: how messages name it."""
    return urlsplit(location)._replace(query="").geturl() if is_remote(location) else str(location)


def filesystem(location: str) -> tuple[object, str]:
    """(pyarrow FileSystem, path inside it) for a remote `location`; one filesystem per store and options."""
    parts = urlsplit(check(location, "location"))
    fs = _filesystem(parts.scheme, parts.query)
    return fs, f"{parts.netloc}{parts.path}".rstrip("/")


@functools.cache
def _filesystem(scheme: str, query: str):
    import pyarrow.fs as pafs

    if scheme != "s3":
        return pafs.FileSystem.from_uri(f"{scheme}://bucket?{query}" if query else f"{scheme}://bucket")[0]
    options = {key: _option(key, value) for key, value in parse_qsl(query)}
    retries = options.pop("retries", None)
    if retries is not None:
        options["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=max(1, retries))
    return pafs.S3FileSystem(**options)


@contextmanager
def _failures(location: str, doing: str, missing: bool = False) -> Iterator[None]:
    """pyarrow's OSError as a StorageError that names the store and says what to check; with `missing`, an object
    that is not there stays a FileNotFoundError (pyarrow says so only in its message)."""
    try:
        yield
    except FileNotFoundError:
        raise
    except OSError as exc:
        if missing and any(t in str(exc) for t in ("NoSuchKey", "does not exist")):
            raise FileNotFoundError(display(location)) from None
        raise StorageError(f"object store {display(location)}: {doing} failed ({str(exc).strip()[:300]}); check that "
                           "the store is reachable (the URI's endpoint_override) and the credentials in this node's "
                           "environment; finished nodes are kept, run the same command again to resume") from None


def read_bytes(location: str | Path) -> bytes:
    """The file's bytes; FileNotFoundError where there is none."""
    if not is_remote(location):
        return Path(str(location).removeprefix("file://")).read_bytes()
    fs, path = filesystem(str(location))
    with _failures(str(location), "reading", missing=True), fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(location: str | Path, data: bytes) -> None:
    """The whole file or nothing: a local file through a temporary name; an object in one upload (a reader never
    sees half an object)."""
    if not is_remote(location):
        atomic_write(Path(str(location).removeprefix("file://")), lambda tmp: tmp.write_bytes(data))
        return
    fs, path = filesystem(str(location))
    with _failures(str(location), "writing"), fs.open_output_stream(path) as f:
        f.write(data)


def is_file(location: str | Path) -> bool:
    if not is_remote(location):
        return Path(str(location).removeprefix("file://")).is_file()
    import pyarrow.fs as pafs

    fs, path = filesystem(str(location))
    with _failures(str(location), "looking up a file"):
        return fs.get_file_info(path).type == pafs.FileType.File


def size(location: str | Path) -> int:
    if not is_remote(location):
        return os.path.getsize(str(location).removeprefix("file://"))
    fs, path = filesystem(str(location))
    with _failures(str(location), "looking up a file"):
        info = fs.get_file_info(path)
    if info.size is None:
        raise FileNotFoundError(display(str(location)))
    return info.size


def remove(location: str | Path) -> None:
    """Delete the file if it is there."""
    if not is_remote(location):
        Path(str(location).removeprefix("file://")).unlink(missing_ok=True)
        return
    fs, path = filesystem(str(location))
    with contextlib.suppress(FileNotFoundError), _failures(str(location), "deleting", missing=True):
        fs.delete_file(path)


def files(folder: str | Path) -> list[str]:
    """Names (relative, with '/') of every file under `folder`; [] where there is none."""
    if not is_remote(folder):
        root = Path(str(folder).removeprefix("file://"))
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    import pyarrow.fs as pafs

    fs, path = filesystem(str(folder))
    with _failures(str(folder), "listing"):
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted(i.path[len(path) + 1:] for i in infos if i.type == pafs.FileType.File)


def download(folder: str, names: list[str], local: Path) -> None:
    """Copy `names` (relative to `folder`) into the local folder `local`, each file whole or not at all, streamed
    (a checkpoint can be as large as memory allows twice over)."""
    for name in names:
        source = join(folder, name)
        if not is_remote(source):
            atomic_write(local / name, lambda tmp, src=source: shutil.copyfile(src, tmp))
            continue
        fs, path = filesystem(source)

        def fetch(tmp: Path, fs=fs, path=path, source=source) -> None:
            with open(tmp, "wb") as fout, _failures(source, "reading", missing=True), \
                    fs.open_input_stream(path) as fin:
                shutil.copyfileobj(fin, fout, CHUNK)

        atomic_write(local / name, fetch)


def upload(local: Path, folder: str, skip: tuple[str, ...] = ()) -> None:
    """Every file under the local folder `local` to `folder`, but the names in `skip`; streamed, and each object
    visible only once whole (an S3 multipart upload completes when its stream closes)."""
    for file in sorted(p for p in local.rglob("*") if p.is_file()):
        name = str(file.relative_to(local))
        if name in skip:
            continue
        target = join(folder, name)
        if not is_remote(target):
            atomic_write(Path(target), lambda tmp, src=file: shutil.copyfile(src, tmp))
            continue
        fs, path = filesystem(target)
        with open(file, "rb") as fin, _failures(target, "writing"), fs.open_output_stream(path) as fout:
            shutil.copyfileobj(fin, fout, CHUNK)
