"""The one storage module: every object access in duplexalign goes through here.

It speaks plain S3 through the ``minio`` SDK, so the same code talks to the embedded SeaweedFS
server started by ``duplexalign services up`` and to any S3 endpoint in a cluster (AWS S3, a
SeaweedFS or Ceph gateway, ...). Nothing outside this module imports ``minio`` or ``boto3`` for
object access; that keeps credentials handling, error translation and the deletion semantics
(which matter for consent withdrawal) in one reviewed place.

Design notes (the *why*):

* Credentials come from environment variables first (a Kubernetes Secret mounted as env), then
  from a JSON file (what the local services write). The secret is never logged, never put in an
  exception message and never stored on an object that gets printed.
* Buckets are versioned. Deleting a key in a versioned bucket only adds a delete marker and keeps
  every old byte, so "forget this user" must delete *every version and marker*:
  :meth:`ObjectStore.delete_all_versions` / :meth:`ObjectStore.delete_prefix_all_versions`.
  SeaweedFS additionally keeps deleted bytes on disk until a volume vacuum
  (``pipelines.services.seaweedfs.vacuum``).
* Listings are generators over the server's pages (1,000 keys a page), so a prefix with tens of
  thousands of objects streams in constant memory.
* Large payloads (an hour of stereo audio is ~350 MB) are never loaded whole: ``put_file`` uploads
  multipart from disk, ``open_stream`` / ``download_file`` read the body incrementally.
* Server failures surface as :class:`StorageError` carrying the bucket, key and S3 error code, so
  callers can tell "absent" from "refused" from "server down" without importing minio.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import IO, Any, Iterable, Iterator
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.commonconfig import ComposeSource, CopySource
from minio.deleteobjects import DeleteObject
from minio.error import MinioException, S3Error
from minio.versioningconfig import ENABLED, VersioningConfig

from components.common.config import StorageConfig

log = logging.getLogger(__name__)

# Multipart part size for uploads from disk: big enough to keep the request count low for
# hour-long audio, small enough that a part (buffered by the SDK) stays cheap in memory.
PART_SIZE = 16 * 1024 * 1024
# S3's single-request CopyObject limit; above it a server-side multipart copy is needed.
_MAX_SINGLE_COPY = 5 * 1024**3
# S3 DeleteObjects accepts at most 1,000 keys per request.
_DELETE_BATCH = 1000
# Error codes that mean "this object (version) is not there" rather than a failure.
ABSENT_CODES = {"NoSuchKey", "NoSuchObject", "NoSuchVersion", "ResourceNotFound"}


class StorageError(RuntimeError):
    """An object-store operation failed. Carries where it failed, never credentials."""

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        bucket: str | None = None,
        code: str | None = None,
    ) -> None:
        self.key = key
        self.bucket = bucket
        self.code = code
        where = f"s3://{bucket}/{key}" if bucket and key is not None else (bucket or key or "")
        detail = f" [{code}]" if code else ""
        super().__init__(f"{message}{detail}" + (f" ({where})" if where else ""))


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing or HEAD says about one object. ``key`` is relative to the store's prefix."""

    key: str
    size: int
    etag: str | None
    version_id: str | None
    last_modified: datetime | None
    content_type: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    # True for "common prefixes" of a non-recursive listing (pseudo folders).
    is_dir: bool = False


@dataclass(frozen=True)
class ObjectVersion:
    """One version (or delete marker) of a key, from ListObjectVersions."""

    key: str
    version_id: str | None
    is_delete_marker: bool
    size: int
    is_latest: bool = False
    last_modified: datetime | None = None


# --------------------------------------------------------------------------------------------
# Credentials and client construction


def load_s3_credentials(cfg: StorageConfig) -> tuple[str, str]:
    """Return ``(access_key, secret_key)``.

    Environment variables named by ``cfg.access_key_env`` / ``cfg.secret_key_env`` win: in a
    cluster they come from a Kubernetes Secret and must override anything baked into an image.
    Otherwise the JSON file ``cfg.credentials_file`` (``{"access_key":..., "secret_key":...}``,
    written by the local services) is read. Error messages name *where* we looked, never values.
    """
    env_access = os.environ.get(cfg.access_key_env, "") if cfg.access_key_env else ""
    env_secret = os.environ.get(cfg.secret_key_env, "") if cfg.secret_key_env else ""
    if env_access and env_secret:
        return env_access, env_secret
    if env_access or env_secret:
        # Half a credential is a deployment bug; falling back to the file would hide it.
        missing = cfg.secret_key_env if env_access else cfg.access_key_env
        raise StorageError(
            f"S3 credentials are half-set in the environment: {missing} is empty or unset"
        )
    if cfg.credentials_file:
        path = Path(cfg.credentials_file).expanduser()
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise StorageError(f"cannot read S3 credentials file {path}: {type(exc).__name__}") from None
            access = data.get("access_key") if isinstance(data, dict) else None
            secret = data.get("secret_key") if isinstance(data, dict) else None
            if not isinstance(access, str) or not isinstance(secret, str) or not access or not secret:
                raise StorageError(
                    f"S3 credentials file {path} must hold non-empty string fields "
                    '"access_key" and "secret_key"'
                )
            return access, secret
    raise StorageError(
        "no S3 credentials: set the environment variables "
        f"{cfg.access_key_env} and {cfg.secret_key_env}, or provide the credentials file "
        f"{cfg.credentials_file or '(storage.credentials_file is empty)'} "
        "(the local services write it on `duplexalign services up`)"
    )


def _split_endpoint(endpoint: str, secure: bool) -> tuple[str, bool]:
    """Accept ``host:port`` (what minio wants) or a URL (what humans paste); return host:port."""
    if "://" in endpoint:
        parts = urlsplit(endpoint)
        if parts.path not in ("", "/"):
            raise StorageError(f"S3 endpoint {endpoint!r} must not contain a path")
        return parts.netloc, parts.scheme == "https"
    return endpoint.rstrip("/"), secure


def make_client(
    cfg: StorageConfig,
    credentials: tuple[str, str] | None = None,
    *,
    connect_timeout_s: float = 10.0,
    read_timeout_s: float = 300.0,
    retries: int = 5,
) -> Minio:
    """A minio client for ``cfg``. Timeouts are explicit: the SDK default waits 5 minutes to
    *connect*, which turns "the server is down" into a hang."""
    access, secret = credentials if credentials is not None else load_s3_credentials(cfg)
    endpoint, secure = _split_endpoint(cfg.endpoint, cfg.secure)
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s),
        maxsize=10,
        retries=urllib3.Retry(
            total=retries, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
        ),
    )
    # Passing the region avoids a GetBucketLocation round trip and is required for presigning.
    return Minio(
        endpoint,
        access_key=access,
        secret_key=secret,
        secure=secure,
        region=cfg.region,
        http_client=http,
    )


# --------------------------------------------------------------------------------------------
# URIs


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` → ``("bucket", "some/key")``; the key may be empty or a prefix."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    return parts.netloc, parts.path.lstrip("/")


def _safe_relative(rel: str) -> PurePosixPath:
    """Object keys become local paths in downloads: refuse keys that would escape the target."""
    path = PurePosixPath(rel)
    if path.is_absolute() or any(part in ("..", "") for part in path.parts) or not path.parts:
        raise StorageError("object key is not a safe relative path", key=rel)
    return path


def fetch_s3_uri_to_path(uri: str, dest: Path, cfg: StorageConfig) -> Path:
    """Download ``uri`` to ``dest`` and return the local path.

    * If the URI names an object, it is downloaded to ``dest`` (or into ``dest`` when ``dest`` is
      an existing folder) and the file path is returned.
    * Otherwise the URI is a prefix ("folder"): every object under it is downloaded into the
      folder ``dest`` keeping the relative layout (how a model store holds a checkpoint folder),
      and ``dest`` is returned.
    """
    bucket, key = parse_s3_uri(uri)
    store = ObjectStore.from_config(cfg, bucket=bucket)
    dest = Path(dest)
    if key and not key.endswith("/") and store.stat(key) is not None:
        target = dest / PurePosixPath(key).name if dest.is_dir() else dest
        store.download_file(key, target)
        return target
    prefix = key.rstrip("/") + "/" if key else ""
    count = 0
    for info in store.list(prefix, recursive=True):
        rel = info.key[len(prefix):]
        if not rel or rel.endswith("/"):
            continue  # folder placeholder objects carry no data
        store.download_file(info.key, dest.joinpath(*_safe_relative(rel).parts))
        count += 1
    if count == 0:
        raise StorageError("nothing found at this URI", bucket=bucket, key=key, code="NoSuchKey")
    log.info("fetched %d object(s) from %s to %s", count, uri, dest)
    return dest


def cached_s3_folder(uri: str, cfg: StorageConfig, cache_root: Path, marker: str) -> Path:
    """Download an s3:// folder (a checkpoint) once into ``cache_root/s3-<digest>``; the digest
    covers the URI and every object's etag, so a re-uploaded folder is fetched again and an
    unchanged one never is. ``marker`` is a file the folder must hold to count as complete. The
    download goes to a temporary folder renamed into place, so a crash never leaves a half
    folder that looks complete. FileNotFoundError when nothing is stored at the URI."""
    import hashlib
    import shutil

    bucket, key = parse_s3_uri(uri)
    prefix = key.rstrip("/") + "/" if key else ""
    store = ObjectStore.from_config(cfg, bucket=bucket)
    objects = sorted((o.key, o.etag or "") for o in store.list(prefix, recursive=True)
                     if not o.key.endswith("/"))
    if not objects:
        raise FileNotFoundError(f"nothing at {uri} (the folder is empty or absent)")
    digest = hashlib.sha256(json.dumps([uri, objects]).encode()).hexdigest()[:24]
    dest = Path(cache_root) / f"s3-{digest}"
    if (dest / marker).is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for obj_key, _ in objects:
            store.download_file(obj_key, tmp.joinpath(*_safe_relative(obj_key[len(prefix):]).parts))
        if dest.exists():  # a concurrent download won the race: keep theirs
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


# --------------------------------------------------------------------------------------------
# The store


class ObjectStore:
    """One bucket (optionally narrowed to a key prefix) of an S3 endpoint.

    Keys passed to and returned by methods are relative to ``prefix``; the prefix lets a run or a
    test own a namespace without every caller concatenating strings.
    """

    def __init__(
        self, client: Minio, bucket: str, prefix: str = "", seaweedfs_master_url: str = ""
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.seaweedfs_master_url = seaweedfs_master_url

    @classmethod
    def from_config(
        cls,
        cfg: StorageConfig,
        bucket: str | None = None,
        *,
        prefix: str = "",
        credentials: tuple[str, str] | None = None,
    ) -> "ObjectStore":
        """Store on ``bucket`` (default: the data bucket ``cfg.bucket``)."""
        return cls(
            make_client(cfg, credentials), bucket or cfg.bucket, prefix, cfg.seaweedfs_master_url
        )

    def with_prefix(self, sub: str) -> "ObjectStore":
        """A view of the same bucket narrowed to ``<prefix>/<sub>/``, sharing the client."""
        return ObjectStore(
            self.client, self.bucket, self.prefix + sub.strip("/"), self.seaweedfs_master_url
        )

    def __repr__(self) -> str:  # no credentials in here on purpose
        return f"ObjectStore(bucket={self.bucket!r}, prefix={self.prefix!r})"

    # -- key helpers -------------------------------------------------------------------------

    def full_key(self, key: str) -> str:
        return self.prefix + key.lstrip("/")

    def _rel(self, full: str) -> str:
        return full[len(self.prefix):] if self.prefix and full.startswith(self.prefix) else full

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.full_key(key)}"

    @contextmanager
    def _errors(self, action: str, key: str | None = None) -> Iterator[None]:
        """Translate SDK/transport errors into StorageError (with the key, without secrets)."""
        # Errors name the full key (the object's real location), not the prefix-relative one.
        key = self.full_key(key) if key is not None else None
        try:
            yield
        except StorageError:
            raise
        except S3Error as exc:
            raise StorageError(
                f"{action} failed: {exc.message or exc.code}",
                key=key,
                bucket=self.bucket,
                code=exc.code,
            ) from exc
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise StorageError(
                f"{action} failed: {type(exc).__name__}: {exc}", key=key, bucket=self.bucket
            ) from exc

    # -- buckets -----------------------------------------------------------------------------

    def ensure_bucket(self, versioning: bool = True) -> None:
        """Create the bucket if absent and (by default) turn versioning on. Idempotent."""
        with self._errors("ensure bucket"):
            if not self.client.bucket_exists(self.bucket):
                try:
                    self.client.make_bucket(self.bucket)
                except S3Error as exc:
                    # Two starters racing: the other one won, which is fine.
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise
            if versioning:
                current = self.client.get_bucket_versioning(self.bucket)
                if current.status != ENABLED:
                    self.client.set_bucket_versioning(self.bucket, VersioningConfig(ENABLED))

    def versioning_enabled(self) -> bool:
        with self._errors("get bucket versioning"):
            return self.client.get_bucket_versioning(self.bucket).status == ENABLED

    # -- writes ------------------------------------------------------------------------------

    def put_bytes(
        self,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> str | None:
        """Store ``data`` at ``key``; returns the new version id (None on unversioned buckets)."""
        with self._errors("put", key):
            result = self.client.put_object(
                self.bucket,
                self.full_key(key),
                io.BytesIO(data),
                len(data),
                content_type=content_type,
                metadata=dict(metadata) if metadata else None,
            )
        return result.version_id

    def put_json(self, key: str, obj: Any, metadata: dict[str, str] | None = None) -> str | None:
        """JSON with sorted keys, so identical content gives identical bytes (and etags)."""
        data = json.dumps(obj, sort_keys=True, ensure_ascii=False, indent=None).encode("utf-8")
        return self.put_bytes(key, data, content_type="application/json", metadata=metadata)

    def put_file(
        self,
        key: str,
        path: str | Path,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> str | None:
        """Upload a file from disk; files above one part go multipart, streamed from disk."""
        with self._errors("put file", key):
            result = self.client.fput_object(
                self.bucket,
                self.full_key(key),
                str(path),
                content_type=content_type,
                metadata=dict(metadata) if metadata else None,
                part_size=PART_SIZE,
            )
        return result.version_id

    # -- reads -------------------------------------------------------------------------------

    def get_bytes(self, key: str, version_id: str | None = None) -> bytes:
        """Whole object in memory: for small objects (JSON, manifests). Use open_stream for audio."""
        with self.open_stream(key, version_id=version_id) as stream:
            with self._errors("get", key):
                return stream.read()

    def get_json(self, key: str, version_id: str | None = None) -> Any:
        return json.loads(self.get_bytes(key, version_id=version_id).decode("utf-8"))

    @contextmanager
    def open_stream(
        self, key: str, version_id: str | None = None, offset: int = 0, length: int = 0
    ) -> Iterator[IO[bytes]]:
        """Yield the streaming HTTP response body (file-like: ``read(n)``, iteration).

        The body is read from the socket as the caller reads, so an hour-long WAV is never held
        whole in memory. On exit the response is closed *and* its connection released back to the
        pool: forgetting ``release_conn`` leaks pooled connections until the pool blocks.
        """
        with self._errors("get", key):
            response = self.client.get_object(
                self.bucket,
                self.full_key(key),
                offset=offset,
                length=length,
                version_id=version_id,
            )
        try:
            yield response  # type: ignore[misc]  # urllib3 response is an io.IOBase
        finally:
            response.close()
            response.release_conn()

    def download_file(self, key: str, path: str | Path, version_id: str | None = None) -> Path:
        """Stream an object to ``path`` (parents created). Written to a temp file in the same
        folder and renamed, so a crash never leaves a truncated file that looks complete."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out, self.open_stream(key, version_id=version_id) as body:
                with self._errors("download", key):
                    while chunk := body.read(1024 * 1024):
                        out.write(chunk)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def stat(self, key: str, version_id: str | None = None) -> ObjectInfo | None:
        """HEAD the object; None if it does not exist (or its latest version is a delete marker)."""
        try:
            with self._errors("stat", key):
                obj = self.client.stat_object(self.bucket, self.full_key(key), version_id=version_id)
        except StorageError as exc:
            if exc.code in ABSENT_CODES:
                return None
            raise
        meta = {}
        for name, value in (obj.metadata or {}).items():
            lower = name.lower()
            if lower.startswith("x-amz-meta-"):
                meta[lower[len("x-amz-meta-"):]] = value
        return ObjectInfo(
            key=key,
            size=int(obj.size or 0),
            etag=obj.etag,
            version_id=obj.version_id,
            last_modified=obj.last_modified,
            content_type=obj.content_type,
            metadata=meta,
        )

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def list(self, prefix: str = "", recursive: bool = True) -> Iterator[ObjectInfo]:
        """Current objects under ``prefix``, lazily, one server page (1,000 keys) at a time."""
        full_prefix = self.full_key(prefix) if prefix else self.prefix
        with self._errors("list", prefix):
            for obj in self.client.list_objects(
                self.bucket, prefix=full_prefix or None, recursive=recursive
            ):
                name = obj.object_name or ""
                yield ObjectInfo(
                    key=self._rel(name),
                    size=int(obj.size or 0),
                    etag=obj.etag,
                    version_id=obj.version_id,
                    last_modified=obj.last_modified,
                    is_dir=bool(obj.is_dir),
                )

    def list_versions(self, prefix: str = "") -> Iterator[ObjectVersion]:
        """Every version and delete marker under ``prefix`` (ListObjectVersions, paged lazily)."""
        full_prefix = self.full_key(prefix) if prefix else self.prefix
        with self._errors("list versions", prefix):
            for obj in self.client.list_objects(
                self.bucket, prefix=full_prefix or None, recursive=True, include_version=True
            ):
                yield ObjectVersion(
                    key=self._rel(obj.object_name or ""),
                    version_id=obj.version_id,
                    is_delete_marker=bool(obj.is_delete_marker),
                    size=int(obj.size or 0),
                    is_latest=str(obj.is_latest).lower() == "true",
                    last_modified=obj.last_modified,
                )

    # -- deletes -----------------------------------------------------------------------------

    def delete(self, key: str) -> None:
        """Plain S3 delete: on a versioned bucket this only adds a delete marker (history stays).
        For erasure (consent withdrawal, PII) use :meth:`delete_all_versions`."""
        with self._errors("delete", key):
            self.client.remove_object(self.bucket, self.full_key(key))

    def delete_versions(self, versions: Iterable[ObjectVersion], what: str) -> int:
        """Batch-delete explicit (key, version) pairs (``what`` names them in errors); raises if
        the server refused any. Returns how many were deleted."""
        batch: list[DeleteObject] = []
        deleted = 0

        def flush() -> int:
            if not batch:
                return 0
            with self._errors("delete versions", what):
                errors = list(self.client.remove_objects(self.bucket, batch))
            # Deleting a version that is already gone is success (idempotency, concurrent runs).
            real = [e for e in errors if e.code not in ABSENT_CODES]
            if real:
                first = real[0]
                raise StorageError(
                    f"delete of {len(real)} version(s) failed: {first.message}",
                    key=first.name,
                    bucket=self.bucket,
                    code=first.code,
                )
            n = len(batch) - (len(errors) - len(real))
            batch.clear()
            return n

        for version in versions:
            # "null" is the version id of objects written before versioning was enabled.
            batch.append(DeleteObject(self.full_key(version.key), version.version_id or "null"))
            if len(batch) >= _DELETE_BATCH:
                deleted += flush()
        deleted += flush()
        return deleted

    def delete_all_versions(self, key: str) -> int:
        """Delete every version and delete marker of exactly ``key``; returns how many.

        Idempotent (0 when nothing is left). Loops until the listing is empty so a version written
        concurrently with the first pass is caught too (bounded, to never spin forever).
        """
        total = 0
        for _ in range(5):
            # The listing is by prefix: "a.wav" would also match "a.wav.json", so filter exactly.
            versions = [v for v in self.list_versions(key) if v.key == key]
            if not versions:
                return total
            total += self.delete_versions(versions, key)
        if any(v.key == key for v in self.list_versions(key)):
            raise StorageError("versions keep reappearing; is a writer still active?",
                               key=self.full_key(key), bucket=self.bucket)
        return total

    def delete_prefix_all_versions(self, prefix: str, *, allow_whole_bucket: bool = False) -> int:
        """Delete every version and marker of every key under ``prefix``; returns how many.

        An empty prefix on an un-prefixed store would wipe the whole bucket; that needs the
        explicit ``allow_whole_bucket=True`` so a bug producing "" cannot do it silently.
        """
        if not (self.prefix or prefix) and not allow_whole_bucket:
            raise ValueError("refusing to delete the whole bucket; pass allow_whole_bucket=True")
        total = 0
        for _ in range(5):
            # Deleting while the server pages the same listing can skip entries, so list first,
            # then delete (versions are small records; 100k of them fit easily in memory).
            versions = list(self.list_versions(prefix))
            if not versions:
                return total
            total += self.delete_versions(versions, prefix)
        return total

    def reclaim_deleted_space(self) -> int | None:
        """Make the server free the disk space of deleted objects; bytes reclaimed if known.

        On SeaweedFS deleted bytes stay on disk until a volume vacuum, so after erasing personal
        data (scrub, consent withdrawal) a stage asks for one. Only possible where the config
        names the SeaweedFS master (``storage.seaweedfs_master_url``, filled in by the local
        services); elsewhere (AWS S3, ...) the store reclaims space itself and this returns None.
        """
        if not self.seaweedfs_master_url:
            return None
        # Imported here: the SeaweedFS administration lives with the server code, and plain
        # S3 users of this module never need it.
        from pipelines.services.seaweedfs import vacuum

        try:
            return vacuum(self.seaweedfs_master_url)
        except RuntimeError as exc:
            raise StorageError(f"reclaiming deleted space failed: {exc}", bucket=self.bucket) from exc

    # -- server-side copy and sharing --------------------------------------------------------

    def copy(
        self,
        src_key: str,
        dst_key: str,
        src_bucket: str | None = None,
        src_version_id: str | None = None,
    ) -> str | None:
        """Server-side copy (no bytes through this process); returns the new version id.

        Without ``src_bucket`` the source is in this bucket under this store's prefix; with it,
        ``src_key`` is a full key in that bucket. Objects above 5 GiB use a multipart copy since
        a single CopyObject is capped there.
        """
        if src_bucket is None:
            bucket, full_src = self.bucket, self.full_key(src_key)
        else:
            bucket, full_src = src_bucket, src_key
        try:
            source_size = self.client.stat_object(bucket, full_src, version_id=src_version_id).size
        except S3Error as exc:
            raise StorageError(
                f"copy source unavailable: {exc.message or exc.code}",
                key=full_src,
                bucket=bucket,
                code=exc.code,
            ) from exc
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise StorageError(
                f"copy source unavailable: {type(exc).__name__}: {exc}", key=full_src, bucket=bucket
            ) from exc
        with self._errors("copy", dst_key):
            if source_size is not None and source_size > _MAX_SINGLE_COPY:
                result = self.client.compose_object(
                    self.bucket,
                    self.full_key(dst_key),
                    [ComposeSource(bucket, full_src, version_id=src_version_id)],
                )
            else:
                result = self.client.copy_object(
                    self.bucket,
                    self.full_key(dst_key),
                    CopySource(bucket, full_src, version_id=src_version_id),
                )
        return result.version_id

    def presigned_get(self, key: str, expires_s: int = 3600) -> str:
        """A time-limited GET URL (lets a browser or a serving pod read one object, no keys)."""
        with self._errors("presign", key):
            return self.client.presigned_get_object(
                self.bucket, self.full_key(key), expires=timedelta(seconds=int(expires_s))
            )
