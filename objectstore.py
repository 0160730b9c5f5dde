"""Results on object storage (`--out s3://bucket/prefix`): the store is the truth, a local working copy the view.

robustgrid reads and writes its results as a folder. With a URI that folder is a working copy
(`$ROBUSTGRID_STORE_CACHE/<scheme>/<bucket>/<prefix>`, default under ~/.cache/robustgrid/stores) kept in step
with the store: every file robustgrid writes is uploaded *before* it takes its place in the copy
(files.atomic_write), so the copy never holds what the store lacks, and a run, `show` or `load` first makes the
copy equal to the store (`pull`). A node that is not the driver's finds a checkpoint it lacks in the store
(files.ensure_local). One run at a time: a lock object created with a conditional write (`If-None-Match: *`),
holding a lease its holder renews (`StoreLease`).

Endpoint, region and credentials come from the standard AWS environment and config (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_PROFILE, an instance role, ...), never from the sweep file.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path

URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")
SCHEMES = ("s3",)            # the lock needs S3's conditional writes (If-None-Match / If-Match)
LOCK_KEY = ".robustgrid.lock"
LEASE_S = 60.0               # a killed holder's lock is taken over this long after its last renewal


class StoreError(RuntimeError):
    """A store robustgrid cannot use as given (scheme, bucket, credentials); the message says what to do."""


class StoreBusy(StoreError):
    """Another run holds the store's lock."""


def is_uri(text: str | os.PathLike) -> bool:
    return bool(URI.match(os.fspath(text)))


def check_uri(uri: str) -> tuple[str, str]:
    """(bucket, prefix) of a URI robustgrid supports; StoreError for any other scheme or a bare bucket."""
    scheme, rest = URI.match(uri).groups()
    if scheme not in SCHEMES:
        raise StoreError(f"{uri}: {scheme}:// is not supported; give a path (a local or NFS folder) or "
                         "s3://bucket/prefix (any S3-compatible store: AWS_ENDPOINT_URL names it)")
    bucket, _, prefix = rest.strip("/").partition("/")
    if not bucket or not prefix:
        raise StoreError(f"{uri}: name a prefix inside the bucket (s3://bucket/prefix): results never fill a bucket's root")
    return bucket, prefix.strip("/")


def cache_root() -> Path:
    base = os.environ.get("ROBUSTGRID_STORE_CACHE")
    return Path(base).expanduser() if base else Path.home() / ".cache" / "robustgrid" / "stores"


def working_copy(uri: str) -> Path:
    bucket, prefix = check_uri(uri)
    return (cache_root() / URI.match(uri).group(1) / bucket / prefix).resolve()


class ObjectStore:
    """The objects under one URI, through pyarrow.fs (what Ray Tune's storage uses too)."""

    def __init__(self, uri: str):
        self.bucket, self.prefix = check_uri(uri)
        self.uri = f"{URI.match(uri).group(1)}://{self.bucket}/{self.prefix}"
        import pyarrow.fs as pafs
        self._pafs = pafs
        self.fs = pafs.S3FileSystem(**_s3_options())
        self.base = f"{self.bucket}/{self.prefix}"

    def key(self, rel: str) -> str:
        return f"{self.base}/{rel}"

    def check_bucket(self) -> None:
        """The bucket exists and answers with these credentials: said before anything is written."""
        try:
            info = self.fs.get_file_info(self.bucket)
        except OSError as e:
            raise StoreError(f"{self.uri}: the store did not answer ({str(e).splitlines()[0][:200]}); check "
                             "AWS_ENDPOINT_URL and the credentials") from None
        if info.type == self._pafs.FileType.NotFound:
            raise StoreError(f"{self.uri}: no bucket {self.bucket!r} at "
                             f"{os.environ.get('AWS_ENDPOINT_URL', 'AWS S3')}; create it first")

    def list(self) -> dict[str, tuple[int, float]]:
        """rel path -> (size, mtime) of every object under the prefix."""
        sel = self._pafs.FileSelector(self.base, recursive=True, allow_not_found=True)
        return {i.path[len(self.base) + 1:]: (i.size, i.mtime.timestamp())
                for i in self.fs.get_file_info(sel) if i.type == self._pafs.FileType.File}

    def put(self, local: Path, rel: str) -> float:
        """Upload a file (an object appears whole or not at all); returns the object's mtime."""
        with open(local, "rb") as src, self.fs.open_output_stream(self.key(rel)) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        return self.fs.get_file_info(self.key(rel)).mtime.timestamp()

    def get(self, rel: str, local: Path, mtime: float | None = None) -> None:
        """Download into place atomically, the local file stamped with the object's mtime (pull's test)."""
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}.get")
        try:
            with self.fs.open_input_stream(self.key(rel)) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            if mtime is None:
                mtime = self.fs.get_file_info(self.key(rel)).mtime.timestamp()
            os.utime(tmp, (mtime, mtime))
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)

    def has(self, rel: str) -> bool:
        return self.fs.get_file_info(self.key(rel)).type == self._pafs.FileType.File

    def move(self, src: str, dst: str) -> None:
        self.fs.move(self.key(src), self.key(dst))

    def pull(self, local: Path, skip: tuple[str, ...] = ()) -> dict[str, int]:
        """Make the working copy equal to the store: objects new or changed downloaded, files the store does
        not hold removed (a copy is never ahead of its store). Top-level folders in `skip` are left alone."""
        local.mkdir(parents=True, exist_ok=True)
        remote = {rel: v for rel, v in self.list().items() if rel.split("/")[0] not in skip and rel != LOCK_KEY}
        got = 0
        for rel, (size, mtime) in remote.items():
            p = local / rel
            if p.is_file() and p.stat().st_size == size and abs(p.stat().st_mtime - mtime) < 1:
                continue
            self.get(rel, p, mtime)
            got += 1
        removed = 0
        for p in sorted(local.rglob("*")):
            rel = p.relative_to(local).as_posix()
            if (p.is_file() and rel.split("/")[0] not in skip and rel not in remote and p.name != LOCK_KEY
                    and not _in_flight(p.name)):
                p.unlink(missing_ok=True)
                removed += 1
        return {"objects": len(remote), "downloaded": got, "removed": removed}


def _in_flight(name: str) -> bool:
    """A temporary another process on this machine is writing (files.atomic_write's, a download's): not stale."""
    return name.startswith(".") and name.endswith((".tmp", ".get", ".part"))


def _s3_options() -> dict:
    """pyarrow's S3 client reads the AWS environment and config itself; AWS_ENDPOINT_URL's scheme says http
    or https (a loopback test server speaks http)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    opts = {}
    if endpoint:
        opts["endpoint_override"] = endpoint
        opts["scheme"] = "http" if endpoint.startswith("http://") else "https"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        opts["region"] = region
    return opts


# --- one writer at a time ------------------------------------------------------------------------

class StoreLease:
    """The store's lock: an object created only where none exists (If-None-Match: *), naming its holder and
    when its lease ends; the holder renews it (If-Match: the ETag it wrote) every lease/3 seconds. A second run
    is refused, naming the holder; a killed holder stops renewing and its lock is taken over (If-Match on the
    stale ETag, so two runs cannot both take it) once the lease has run out."""

    def __init__(self, store: ObjectStore, lease_s: float | None = None):
        self.store = store
        self.lease_s = float(os.environ.get("ROBUSTGRID_LOCK_LEASE_S", lease_s or LEASE_S))
        self.key = f"{store.prefix}/{LOCK_KEY}"
        self.etag: str | None = None
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.holder = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"

    def _client(self):
        try:
            import boto3
        except ImportError:
            raise StoreError("results on s3:// need boto3 for the store's lock (conditional writes): "
                             "pip install 'robustgrid[s3]'") from None
        return boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))

    def _body(self) -> bytes:
        return json.dumps({"holder": self.holder, "expires_at": time.time() + self.lease_s}).encode()

    def acquire(self) -> StoreLease:
        from botocore.exceptions import ClientError
        c = self._client()
        try:
            self.etag = c.put_object(Bucket=self.store.bucket, Key=self.key, Body=self._body(), IfNoneMatch="*")["ETag"]
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("NotImplemented", "InvalidArgument", "501"):
                raise StoreError(f"{self.store.uri}: this store does not do conditional writes (If-None-Match), so "
                                 "robustgrid cannot keep a second run out; use a store that does (AWS S3, MinIO, "
                                 "moto) or a folder") from None
            if code not in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
                raise StoreError(f"{self.store.uri}: cannot write the lock ({code}: {e})") from None
            self._take_over_if_expired(c)
        self._thread = threading.Thread(target=self._renew, daemon=True, name="robustgrid-lease")
        self._thread.start()
        return self

    def _take_over_if_expired(self, c) -> None:
        from botocore.exceptions import ClientError
        try:
            got = c.get_object(Bucket=self.store.bucket, Key=self.key)
            held = json.loads(got["Body"].read() or b"{}")
        except (ClientError, ValueError):
            held, got = {}, {"ETag": None}
        if held.get("expires_at", 0) > time.time():
            raise StoreBusy(f"{self.store.uri}: in use by another robustgrid run ({held.get('holder', 'unknown')}, "
                            f"lease until {time.strftime('%H:%M:%S', time.localtime(held['expires_at']))}); wait "
                            "for it to end or choose another --out")
        try:    # expired: take it, unless another run took it first
            kw = {"IfMatch": got["ETag"]} if got.get("ETag") else {"IfNoneMatch": "*"}
            self.etag = c.put_object(Bucket=self.store.bucket, Key=self.key, Body=self._body(), **kw)["ETag"]
        except ClientError:
            raise StoreBusy(f"{self.store.uri}: another run took the expired lock first; wait for it to end") from None

    def _renew(self) -> None:
        from botocore.exceptions import ClientError
        c = self._client()
        while not self._stop.wait(self.lease_s / 3):
            try:
                self.etag = c.put_object(Bucket=self.store.bucket, Key=self.key, Body=self._body(),
                                         IfMatch=self.etag)["ETag"]
            except ClientError:
                self.lost = True      # taken over (this process stalled past its lease): say so at release
                return
            except Exception:         # a network blip: try again at the next tick, the lease still runs
                continue

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        if self.etag and not self.lost:
            c = self._client()
            try:
                head = c.head_object(Bucket=self.store.bucket, Key=self.key)
                if head["ETag"] == self.etag:
                    c.delete_object(Bucket=self.store.bucket, Key=self.key)
            except Exception:
                pass          # the lease runs out on its own
        self.etag = None
