"""The local object store: atomic writes, conditional create, listing, directory round trips."""

import threading

import pytest

from cafe.storage import AlreadyExists, LocalStore, open_store


def test_put_get_list_delete(tmp_path):
    store = open_store(tmp_path / "store")
    store.put_bytes("a/b.txt", b"one")
    store.put_bytes("a/c/d.txt", b"two")
    assert store.get_bytes("a/b.txt") == b"one"
    assert store.list("a/") == ["a/b.txt", "a/c/d.txt"]
    assert store.exists("a/c/d.txt") and not store.exists("a/x")
    store.delete_prefix("a/c")
    assert store.list() == ["a/b.txt"]
    with pytest.raises(FileNotFoundError, match="a/x"):
        store.get_bytes("a/x")


def test_keys_cannot_leave_the_root(tmp_path):
    store = LocalStore(tmp_path)
    for bad in ("../x", "/etc/passwd", "a//b", "a/./b"):
        with pytest.raises(ValueError, match="invalid object key"):
            store.put_bytes(bad, b"")


def test_put_if_absent_lets_exactly_one_writer_win(tmp_path):
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


def test_directory_round_trip(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "w.bin").write_bytes(b"\0" * 10)
    (src / "sub" / "cfg.json").write_text("{}")
    store = open_store(f"file://{tmp_path / 'store'}")
    assert store.put_dir("models/m/1", src) == ["models/m/1/sub/cfg.json", "models/m/1/w.bin"]
    got = store.get_dir("models/m/1", tmp_path / "dst")
    assert sorted(p.relative_to(tmp_path / "dst").as_posix() for p in got) == ["sub/cfg.json", "w.bin"]
    assert (tmp_path / "dst" / "w.bin").read_bytes() == b"\0" * 10
