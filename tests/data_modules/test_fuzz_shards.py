"""Fuzz the safe shard reader with untrusted bytes (issue 8): a seeded mutator, a bounded number of
cases in CI (``LUMA_FUZZ_CASES``, default 200, ~30 s), each case a shard folder replayed end to end.

Per case: the replay never raises, yields exactly its planned number of batches, never unpickles
(a live pickle payload would create a marker file), never writes outside its folder (the folder's
parent listing is unchanged, no file appears anywhere a traversal name points to), and every
event the manifest lists that does not come out is counted as skipped (per event, with a reason).
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from tar_helpers import npy_bytes

from data_modules import ReaderConfig, ReplayConfig, ShardSetWriter, StreamReplayDataset, write_manifest
from data_modules.shard_format import scan_manifest
from luma_pl.threads import limit_cpu_threads

limit_cpu_threads()
CASES = int(os.environ.get("LUMA_FUZZ_CASES", "200"))
CFG = ReaderConfig(decode_media=False, max_member_bytes=1 << 20)


class _Marker:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _member(name: str, data: bytes, kind: bytes = tarfile.REGTYPE, link: str = "", size: int | None = None):
    info = tarfile.TarInfo(name)
    info.size = len(data) if size is None else size
    info.type = kind
    info.linkname = link
    return info, data


def _valid_shard(rng, n_events: int = 6) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(n_events):
            for name, data in ((f"e{i}.ts", str(i).encode()), (f"e{i}.txt", f"text {i}".encode()),
                               (f"e{i}.x.npy", npy_bytes(rng.standard_normal(4).astype(np.float32)))):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()



def _hostile_shard(rng, marker: Path, outside: Path) -> bytes:
    """A tar mixing valid samples with hostile members (each hostile sample must be skipped)."""
    payload = pickle.dumps(_Marker(marker))
    hostile = [
        _member(f"../{outside.name}/evil.ts", b"1"),
        _member(f"/{outside}/abs.ts", b"1"),
        _member("c:/win.ts", b"1"),
        _member("p.pkl", payload), _member("p2.pyd", payload), _member("p3.pth", payload), _member("p4.pickle", payload),
        _member("ln.ts", b"", tarfile.SYMTYPE, link=str(outside / "target")),
        _member("hl.ts", b"", tarfile.LNKTYPE, link="e0.ts"),
        _member("dev.ts", b"", tarfile.CHRTYPE),
        _member("fifo.ts", b"", tarfile.FIFOTYPE),
        _member("big.ts", b"2", size=None),
        _member("obj.ts", b"3"), _member("obj.x.npy", npy_bytes(np.array([{"a": 1}], dtype=object))),
    ]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        picks = rng.choice(len(hostile), size=int(rng.integers(1, 5)), replace=False)
        for j, i in enumerate(sorted(picks)):
            info, data = hostile[i]
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
            ok = tarfile.TarInfo(f"ok{j}.ts")
            ok.size = 1
            tar.addfile(ok, io.BytesIO(b"7"))
    raw = buf.getvalue()
    if rng.random() < 0.3:  # a huge declared size in a (re-checksummed) header
        raw = _set_size(raw, int(rng.choice([1 << 40, 1 << 33, 8 ** 11 - 1])))
    return raw


def _set_size(raw: bytes, size: int) -> bytes:
    """Rewrite the first header's size field (octal or base-256) and fix its checksum."""
    h = bytearray(raw[:512])
    field = (b"%011o\0" % size) if size < 8 ** 11 else (b"\x80" + size.to_bytes(11, "big"))
    h[124:136] = field
    h[148:156] = b"        "
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h) + raw[512:]


def _mutate(rng, raw: bytes) -> tuple[str, bytes]:
    b = bytearray(raw)
    op = rng.integers(0, 6)
    if op == 0:  # bit flips anywhere
        for _ in range(int(rng.integers(1, 16))):
            i = int(rng.integers(0, len(b)))
            b[i] ^= 1 << int(rng.integers(0, 8))
        return "bitflip", bytes(b)
    if op == 1:  # header garbage (first header or a later one), checksum left wrong or fixed
        start = 512 * int(rng.integers(0, max(1, len(b) // 512)))
        for _ in range(int(rng.integers(1, 40))):
            b[start + int(rng.integers(0, 512))] = int(rng.integers(0, 256))
        return "header", bytes(b)
    if op == 2:  # truncation anywhere
        return "truncate", bytes(b[: int(rng.integers(0, len(b)))])
    if op == 3:  # random bytes
        return "random", rng.bytes(int(rng.integers(0, 4096)))
    if op == 4:  # splice: a chunk repeated / moved
        i, j = sorted(rng.integers(0, len(b), 2).tolist())
        return "splice", bytes(b[:j] + b[i:j] + b[j:])
    return "size", _set_size(bytes(b), int(rng.choice([0, 1, 1 << 20, 1 << 35, 8 ** 11 - 1, 1 << 62])))


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_fuzz_reader_never_raises_unpickles_or_escapes(tmp_path):
    rng = np.random.default_rng(1234)
    outside = tmp_path / "outside"
    outside.mkdir()
    marker = tmp_path / "PWNED"
    base_valid = _valid_shard(rng)
    kinds: dict[str, int] = {}
    skipped_total = events_total = 0
    for case in range(CASES):
        folder = tmp_path / f"c{case}"
        folder.mkdir()
        if rng.random() < 0.35:
            kind, raw = "hostile", _hostile_shard(rng, marker, outside)
            if rng.random() < 0.5:
                kind, raw = _mutate(rng, raw)
                kind = "hostile+" + kind
        else:
            kind, raw = _mutate(rng, base_valid)
        kinds[kind] = kinds.get(kind, 0) + 1
        shard = folder / "f-000000.tar"
        shard.write_bytes(raw)
        # a second, intact shard after the fuzzed one must still replay fully
        (folder / "f-000001.tar").write_bytes(base_valid)
        manifest = scan_manifest(sorted(folder.glob("f-*.tar")), root=folder)  # never raises either
        manifest.spaces = {"x": 4}
        manifest.media = ["txt"]
        write_manifest(manifest, folder)
        before_outside = _listing(tmp_path / "outside")
        ds = StreamReplayDataset(ReplayConfig(root=str(folder), batch_size=4, reader=CFG))
        try:
            batches = list(ds)
        except Exception as err:  # noqa: BLE001 - the assertion is that nothing escapes
            pytest.fail(f"case {case} ({kind}): the replay raised {type(err).__name__}: {err}")
        assert len(batches) == ds.batches_per_pass(), (case, kind)
        keys = [k for b in batches for k in b["key"]]
        skipped = sum(b["skipped"] for b in batches)
        assert skipped == len(ds.skips)
        written = manifest.total_events
        over = any(s.code == "extra_events" for s in ds.skips)
        # the intact shard after the fuzzed one replays fully, unless the fuzzed shard's tar headers
        # scanned to fewer events than it yields (then the plan ends early and says so, counted)
        assert keys[-6:] == [f"e{i}" for i in range(6)] or over, (case, kind, keys)
        # per event: every event the manifest lists is replayed or counted as skipped
        assert len(keys) + sum(b["events_skipped"] for b in batches) >= written, (case, kind, ds.skips)
        assert sum(b["events_skipped"] for b in batches) == sum(s.events for s in ds.skips)
        assert not marker.exists(), (case, kind, "a pickle payload was unpickled")
        assert _listing(tmp_path / "outside") == before_outside, (case, kind, "wrote outside")
        assert set(os.listdir(folder)) == {"f-000000.tar", "f-000001.tar", "manifest.json"}, (case, kind)
        skipped_total += skipped
        events_total += len(keys)
    assert not marker.exists() and not (tmp_path.parent / "evil.ts").exists()
    print(f"\nfuzz: {CASES} cases {dict(sorted(kinds.items()))}; {events_total} events replayed, "
          f"{skipped_total} skips counted")
    assert skipped_total > CASES // 2  # the mutator does produce corruption


@pytest.mark.parametrize("member", ["sym", "hard"])
def test_links_pointing_outside_are_never_followed(tmp_path, member):
    """A link member is never read through (its sample is skipped) and nothing is created."""
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    shards = tmp_path / "s"
    with ShardSetWriter(shards, "l", 10) as w:
        w.write_event(ts=1, key="a", media={"txt": "a"})
    with tarfile.open(shards / "l-000000.tar", "a") as tar:
        info = tarfile.TarInfo("b.txt")
        info.type = tarfile.SYMTYPE if member == "sym" else tarfile.LNKTYPE
        info.linkname = str(secret) if member == "sym" else "../secret.txt"
        tar.addfile(info)
    ds = StreamReplayDataset(ReplayConfig(root=str(shards), batch_size=4, reader=CFG))
    (b,) = list(ds)
    assert b["key"] == ["a"] and b["skipped"] == 1
    assert "is a link/device, not a regular file" in ds.skips[0].reason
    assert all("do not read" not in str(t) for t in b["media"]["txt"])
    assert sorted(os.listdir(shards)) == ["l-000000.tar", "manifest.json"]
