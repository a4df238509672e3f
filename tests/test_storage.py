"""The object stores (a local folder, and S3 on a real moto server process): atomic writes, conditional create,
listing, directory round trips, clear errors."""

import os
import threading

import pytest
import urllib3

from cafe.storage import AlreadyExists, LocalStore, StoreError, open_store


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return open_store(tmp_path / "store")
    return open_store(request.getfixturevalue("s3_uri"))


def test_put_get_list_delete(store):
    store.put_bytes("a/b.txt", b"one")
    store.put_bytes("a/c/d.txt", b"two")
    assert store.get_bytes("a/b.txt") == b"one"
    assert store.list("a/") == ["a/b.txt", "a/c/d.txt"]
    assert store.exists("a/c/d.txt") and not store.exists("a/x")
    store.delete_prefix("a/c")
    assert store.list() == ["a/b.txt"]
    with pytest.raises(FileNotFoundError, match="a/x"):
        store.get_bytes("a/x")
    with pytest.raises(FileNotFoundError, match="a/x"):
        store.get_file("a/x", "unused")


def test_keys_cannot_leave_the_root(store):
    for bad in ("../x", "/etc/passwd", "a//b", "a/./b"):
        with pytest.raises(ValueError, match="invalid object key"):
            store.put_bytes(bad, b"")


def test_put_if_absent_refuses_to_overwrite(store):
    store.put_if_absent("index/v1.json", b"first")
    with pytest.raises(AlreadyExists):
        store.put_if_absent("index/v1.json", b"second")
    assert store.get_bytes("index/v1.json") == b"first"


def test_put_if_absent_lets_exactly_one_writer_win(tmp_path):
    # LocalStore only: moto's server checks If-None-Match and then writes without a lock, so racing writers can
    # both win there (see cafe.registry.NumberedLog, which does not rely on it).
    store = LocalStore(tmp_path)
    wins, losses = [], []

    def claim(i):
        try:
            store.put_if_absent("index/v1.json", str(i).encode())
            wins.append(i)
        except AlreadyExists:
            losses.append(i)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(losses) == 7
    assert store.get_bytes("index/v1.json") == str(wins[0]).encode()
    assert store.list() == ["index/v1.json"]  # no temporary files left behind


def test_directory_round_trip(store, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "w.bin").write_bytes(b"\0" * 10)
    (src / "sub" / "cfg.json").write_text("{}")
    assert store.put_dir("models/m/1", src) == ["models/m/1/sub/cfg.json", "models/m/1/w.bin"]
    got = store.get_dir("models/m/1", tmp_path / "dst")
    assert sorted(p.relative_to(tmp_path / "dst").as_posix() for p in got) == ["sub/cfg.json", "w.bin"]
    assert (tmp_path / "dst" / "w.bin").read_bytes() == b"\0" * 10


def test_file_uri_is_a_local_folder(tmp_path):
    store = open_store(f"file://{tmp_path / 'store'}")
    store.put_bytes("k", b"v")
    assert isinstance(store, LocalStore) and (tmp_path / "store" / "k").read_bytes() == b"v"


def test_s3_large_file_goes_up_in_parts(s3_server, s3_uri, tmp_path):
    from cafe.storage.s3 import MiB, S3Store

    store = S3Store.from_uri(s3_uri, part_size=5 * MiB)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(11 * MiB))
    store.put_file("w/big.bin", big)
    stat = store.client.stat_object(store.bucket, "store/w/big.bin")
    assert stat.etag.endswith("-3")  # a completed multipart upload of three parts
    store.get_file("w/big.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == big.read_bytes()


def test_s3_errors_name_the_bucket_and_what_to_do(s3_server):
    with pytest.raises(StoreError, match="bucket 'no-such-bucket' does not exist"):
        open_store("s3://no-such-bucket/x").put_bytes("k", b"v")
    from minio import Minio

    from cafe.storage.s3 import S3Store

    # nothing listens on the discard port; no retries, so the test does not wait out the SDK's backoff
    client = Minio("127.0.0.1:9", secure=False, region="us-east-1", http_client=urllib3.PoolManager(retries=False))
    with pytest.raises(StoreError, match="cannot reach S3 endpoint http://127.0.0.1:9"):
        S3Store("some-bucket", client=client, endpoint="http://127.0.0.1:9").get_bytes("k")
