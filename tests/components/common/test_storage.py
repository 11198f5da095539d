"""components.common.storage against the real SeaweedFS S3 server of the test session."""

from __future__ import annotations

import hashlib
import json
import os
import tracemalloc
import types
import urllib.request
from pathlib import Path

import pytest

from components.common.config import StorageConfig
from components.common.storage import (
    ObjectStore,
    StorageError,
    fetch_s3_uri_to_path,
    load_s3_credentials,
    make_client,
    parse_s3_uri,
)
from pipelines.services import seaweedfs
from pipelines.services.procutil import free_ports

MiB = 1024 * 1024


# --------------------------------------------------------------------------------------------
# Unit tests (no server)


def test_parse_s3_uri() -> None:
    assert parse_s3_uri("s3://models/whisper/large-v3") == ("models", "whisper/large-v3")
    assert parse_s3_uri("s3://bucket") == ("bucket", "")
    assert parse_s3_uri("s3://bucket/dir/") == ("bucket", "dir/")
    for bad in ("http://x/y", "s3:///key", "/local/path"):
        with pytest.raises(ValueError):
            parse_s3_uri(bad)


def test_credentials_env_wins_then_file_and_secret_never_in_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps({"access_key": "FILEKEY", "secret_key": "file-secret-xyz"}))
    cfg = StorageConfig(credentials_file=str(creds), access_key_env="T_AK", secret_key_env="T_SK")
    monkeypatch.delenv("T_AK", raising=False)
    monkeypatch.delenv("T_SK", raising=False)
    assert load_s3_credentials(cfg) == ("FILEKEY", "file-secret-xyz")

    monkeypatch.setenv("T_AK", "ENVKEY")
    monkeypatch.setenv("T_SK", "env-secret-abc")
    assert load_s3_credentials(cfg) == ("ENVKEY", "env-secret-abc")  # the cluster Secret wins

    monkeypatch.delenv("T_SK")
    with pytest.raises(StorageError, match="half-set") as half:
        load_s3_credentials(cfg)
    assert "ENVKEY" not in str(half.value)

    monkeypatch.delenv("T_AK")
    missing = cfg.model_copy(update={"credentials_file": str(tmp_path / "absent.json")})
    with pytest.raises(StorageError, match="no S3 credentials") as none:
        load_s3_credentials(missing)
    assert "T_AK" in str(none.value) and "absent.json" in str(none.value)

    creds.write_text(json.dumps({"access_key": "K", "secret_key": ""}))
    with pytest.raises(StorageError) as bad:
        load_s3_credentials(cfg)
    assert "file-secret-xyz" not in str(bad.value)


def test_store_repr_has_no_secret(services_config) -> None:
    s = ObjectStore.from_config(services_config.storage)
    _, secret = load_s3_credentials(services_config.storage)
    assert secret not in repr(s)


# --------------------------------------------------------------------------------------------
# Against the live server

integration = pytest.mark.integration


@integration
def test_buckets_exist_and_are_versioned(services_config) -> None:
    for bucket in (services_config.storage.bucket, services_config.storage.groundtruth_bucket):
        s = ObjectStore.from_config(services_config.storage, bucket=bucket)
        s.ensure_bucket()  # idempotent
        assert s.versioning_enabled()


@integration
def test_put_get_stat_json_and_absent_keys(store: ObjectStore) -> None:
    vid = store.put_bytes("a/x.bin", b"\x00\x01payload", metadata={"duplexalign-content": "user-audio"})
    assert vid  # versioned bucket → a version id
    assert store.get_bytes("a/x.bin") == b"\x00\x01payload"
    info = store.stat("a/x.bin")
    assert info is not None and info.size == 9 and info.version_id == vid
    assert info.metadata.get("duplexalign-content") == "user-audio"

    store.put_json("a/doc.json", {"b": 1, "a": "é"})
    assert store.get_bytes("a/doc.json") == '{"a": "é", "b": 1}'.encode()  # sorted, UTF-8
    assert store.get_json("a/doc.json") == {"a": "é", "b": 1}
    doc = store.stat("a/doc.json")
    assert doc is not None and doc.content_type == "application/json"

    assert store.stat("a/missing") is None and not store.exists("a/missing")
    assert store.exists("a/x.bin")
    with pytest.raises(StorageError) as err:
        store.get_bytes("a/missing")
    assert err.value.key == store.full_key("a/missing")  # where it really is
    assert store.full_key("a/missing") in str(err.value)
    assert err.value.code == "NoSuchKey"


@integration
def test_list_streams_pages_and_versions(store: ObjectStore) -> None:
    n = 1050  # more than one 1,000-key page, for objects and for versions
    for i in range(n):
        store.put_bytes(f"many/{i:05d}", b"x")
    store.put_bytes("other/y", b"y")

    listing = store.list("many/")
    assert isinstance(listing, types.GeneratorType)  # lazy, not a list
    keys = [o.key for o in listing]
    assert keys == [f"many/{i:05d}" for i in range(n)]  # relative to the store prefix
    assert all(o.size == 1 and o.etag for o in store.list("many/0000"))

    top = {o.key: o.is_dir for o in store.list("", recursive=False)}
    assert top == {"many/": True, "other/": True}

    versions = list(store.list_versions("many/"))
    assert len(versions) == n and not any(v.is_delete_marker for v in versions)

    assert store.delete_prefix_all_versions("many/") == n
    assert list(store.list_versions("many/")) == []
    assert [o.key for o in store.list("")] == ["other/y"]


@integration
def test_delete_all_versions_leaves_nothing_not_even_markers(store: ObjectStore) -> None:
    v1 = store.put_bytes("u/conv.wav", b"first")
    v2 = store.put_bytes("u/conv.wav", b"second")
    store.delete("u/conv.wav")  # plain delete = delete marker, history kept
    store.put_bytes("u/conv.wav.json", b"sibling")  # shares the prefix, must survive

    assert store.stat("u/conv.wav") is None
    assert store.get_bytes("u/conv.wav", version_id=v1) == b"first"  # old bytes still there
    versions = [v for v in store.list_versions("u/conv.wav") if v.key == "u/conv.wav"]
    assert len(versions) == 3 and sum(v.is_delete_marker for v in versions) == 1

    assert store.delete_all_versions("u/conv.wav") == 3
    # Count leftovers the hard way: ListObjectVersions and a HEAD per former version.
    assert [v for v in store.list_versions("u/conv.wav") if v.key == "u/conv.wav"] == []
    for vid in (v1, v2):
        assert store.stat("u/conv.wav", version_id=vid) is None
    assert store.delete_all_versions("u/conv.wav") == 0  # idempotent
    assert store.get_bytes("u/conv.wav.json") == b"sibling"


@integration
def test_delete_prefix_refuses_whole_bucket(services_config) -> None:
    unprefixed = ObjectStore.from_config(services_config.storage)
    with pytest.raises(ValueError):
        unprefixed.delete_prefix_all_versions("")


@integration
def test_server_side_copy_within_and_across_buckets(store: ObjectStore, services_config) -> None:
    v1 = store.put_bytes("corpus/a.wav", b"A" * 1000)
    store.put_bytes("corpus/a.wav", b"B" * 1000)
    assert store.copy("corpus/a.wav", "rekeyed/a.wav")
    assert store.get_bytes("rekeyed/a.wav") == b"B" * 1000
    store.copy("corpus/a.wav", "rekeyed/a-v1.wav", src_version_id=v1)
    assert store.get_bytes("rekeyed/a-v1.wav") == b"A" * 1000

    gt = ObjectStore.from_config(services_config.storage, bucket=services_config.storage.groundtruth_bucket)
    gt_key = store.full_key("truth.json")
    gt.put_json(gt_key, {"truth": 1})
    try:
        store.copy(gt_key, "from-gt.json", src_bucket=gt.bucket)
        assert store.get_json("from-gt.json") == {"truth": 1}
    finally:
        gt.delete_all_versions(gt_key)
    with pytest.raises(StorageError):
        store.copy("corpus/absent.wav", "rekeyed/x.wav")


@integration
def test_wrong_credentials_are_refused_by_the_server(
    services_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = services_config.storage
    access, _ = load_s3_credentials(cfg)
    bad = ObjectStore.from_config(cfg, credentials=(access, "not-the-secret-123"))
    with pytest.raises(StorageError) as err:
        bad.put_bytes("tests/should-not-exist", b"x")
    assert err.value.code in {"SignatureDoesNotMatch", "AccessDenied"}
    assert "not-the-secret-123" not in str(err.value)

    unknown = ObjectStore.from_config(cfg, credentials=("NOSUCHKEY", "whatever-secret"))
    with pytest.raises(StorageError) as err2:
        list(unknown.list(""))
    assert err2.value.code in {"InvalidAccessKeyId", "AccessDenied", "SignatureDoesNotMatch"}

    # The env vars win over the (correct) credentials file, so a wrong Secret is refused too.
    monkeypatch.setenv(cfg.access_key_env, access)
    monkeypatch.setenv(cfg.secret_key_env, "wrong-from-env-456")
    with pytest.raises(StorageError):
        ObjectStore.from_config(cfg).exists("anything")


def test_unreachable_endpoint_is_a_storage_error() -> None:
    port = free_ports(1)[0]
    cfg = StorageConfig(endpoint=f"127.0.0.1:{port}", credentials_file="")
    s = ObjectStore(make_client(cfg, ("a", "b"), retries=0), "bucket")
    with pytest.raises(StorageError) as err:
        s.get_bytes("k")
    assert err.value.key == "k"


@integration
def test_put_file_multipart_open_stream_download_and_fetch(store: ObjectStore, tmp_path: Path,
                                                           services_config) -> None:
    big = tmp_path / "hour.wav"
    digest = hashlib.sha256()
    with open(big, "wb") as fh:  # 40 MiB > one 16 MiB part: exercises multipart upload
        for _ in range(40):
            chunk = os.urandom(MiB)
            digest.update(chunk)
            fh.write(chunk)
    store.put_file("audio/hour.wav", big, content_type="audio/wav")
    uploaded = store.stat("audio/hour.wav")
    assert uploaded is not None and uploaded.size == 40 * MiB

    tracemalloc.start()
    try:
        streamed = hashlib.sha256()
        with store.open_stream("audio/hour.wav") as body:
            while chunk := body.read(256 * 1024):
                streamed.update(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert streamed.hexdigest() == digest.hexdigest()
    assert peak < 8 * MiB, f"streaming read held {peak / MiB:.1f} MiB"

    with store.open_stream("audio/hour.wav", offset=10, length=5) as body:
        assert len(body.read()) == 5

    out = store.download_file("audio/hour.wav", tmp_path / "dl" / "copy.wav")
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest.hexdigest()
    assert not list((tmp_path / "dl").glob(".*part"))  # temp file renamed, not left behind

    # fetch_s3_uri_to_path: one object, then a "folder" (how models come from an S3 store).
    store.put_bytes("model/config.json", b"{}")
    store.put_bytes("model/tokenizer/vocab.txt", b"a\nb\n")
    one = fetch_s3_uri_to_path(store.uri("model/config.json"), tmp_path / "one.json",
                               services_config.storage)
    assert one.read_bytes() == b"{}"
    folder = fetch_s3_uri_to_path(store.uri("model"), tmp_path / "model", services_config.storage)
    assert (folder / "config.json").read_bytes() == b"{}"
    assert (folder / "tokenizer" / "vocab.txt").read_bytes() == b"a\nb\n"
    with pytest.raises(StorageError):
        fetch_s3_uri_to_path(store.uri("no-such-model/"), tmp_path / "x", services_config.storage)


@integration
def test_presigned_get(store: ObjectStore) -> None:
    store.put_bytes("share/report.json", b'{"ok": true}', content_type="application/json")
    url = store.presigned_get("share/report.json", expires_s=60)
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.read() == b'{"ok": true}'


@integration
def test_vacuum_reclaims_deleted_bytes_on_disk(store: ObjectStore, services_state) -> None:
    sw = services_state.seaweedfs
    assert store.seaweedfs_master_url == sw.master_url  # from config_with_live_endpoints
    size = 24 * MiB
    store.put_bytes("erase/big.bin", os.urandom(size))
    before = seaweedfs.volume_bytes(sw.data_dir)
    assert store.delete_all_versions("erase/big.bin") == 1
    # Deleted, but the bytes are still on disk until a vacuum...
    assert seaweedfs.volume_bytes(sw.data_dir) >= before - MiB
    reclaimed = store.reclaim_deleted_space()  # what a stage calls (counter-based figure)
    assert reclaimed is not None and reclaimed >= size
    after = seaweedfs.volume_bytes(sw.data_dir)
    assert after <= before - size, (before, after)  # ...and now they are really gone
    # The direct call with the data dir measures on disk; nothing left to reclaim now.
    assert seaweedfs.vacuum(sw.master_url, sw.data_dir) == 0


def test_reclaim_is_a_no_op_without_a_seaweedfs_master() -> None:
    s = ObjectStore(make_client(StorageConfig(credentials_file=""), ("a", "b")), "bucket")
    assert s.reclaim_deleted_space() is None
