"""Bad input, one case each (issue 8): a clear error naming the argument/file, the bad value and the
fix, or a counted skip; and no already-admitted item lost (``memory.audit()`` and ``len(memory)``
unchanged after the failed call).

Already covered elsewhere (not repeated here): memory shape/NaN/norm/duplicate-in-call/k=0 messages
(test_memory_tiered.test_input_errors_name_the_argument), reader pickle/unsafe-name/size/bad-npy/
truncated shards (test_shards), media errors naming the file (test_media), encoder text/config errors
(test_encoders), bridge NaN/dims (test_bridge), StrictConfig unknown keys (test_configuration, test_cli).
"""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch
from tar_helpers import add_member, npy_bytes

from data_modules import (
    ReaderConfig,
    ReplayConfig,
    ShardSetWriter,
    StreamReplayDataModule,
    StreamReplayDataset,
    iter_chunks,
)
from luma_pl.bridge.procrustes import StreamingProcrustes
from luma_pl.configuration import ConfigError
from luma_pl.memory import MemoryConfig, TieredMemory
from luma_pl.threads import limit_cpu_threads

limit_cpu_threads()
D = 16
RAW = ReaderConfig(decode_media=False)


def unit(rng, n, d=D):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def small_cfg(**kw) -> MemoryConfig:
    base = dict(dim=D, hot_max_items=40, hot_max_bytes=1 << 20, warm_max_items=600, warm_max_bytes=1 << 22,
                nlist=4, nprobe=4, pq_m=4, pq_nbits=4, train_points_per_centroid=20, hnsw_m=8)
    return MemoryConfig(**(base | kw))


@pytest.fixture
def memory():
    """A memory with items in every place: hot, warm (PQ), buffer-free after training, evicted."""
    rng = np.random.default_rng(0)
    m = TieredMemory(small_cfg())
    m.insert(np.arange(400), unit(rng, 400))
    m.evict([5, 6])
    yield m
    m.close()


def _snapshot(m: TieredMemory) -> tuple:
    return m.audit(), len(m), m.counters["inserted"], sorted(m.key_of)


# --- vectors into the memory ------------------------------------------------------------------
def _vec(kind: str) -> np.ndarray:
    x = unit(np.random.default_rng(1), 1)
    return {
        "nan": np.where(np.arange(D) == 3, np.nan, x).astype(np.float32),
        "inf": np.where(np.arange(D) == 0, np.inf, x).astype(np.float32),
        "zero": np.zeros((1, D), np.float32),
        "not_unit": 3 * x,
        "wrong_dim": unit(np.random.default_rng(1), 1, D + 1),
        "one_d": x[0],
        "complex": x.astype(np.complex64),
        "bool": np.eye(1, D, dtype=bool),
        "str": np.array([["0.25"] * D]),
        "object": np.array([[object()] * D], dtype=object),
    }[kind]


INSERT_CASES = {
    "nan": "vectors row 0 has NaN or inf", "inf": "vectors row 0 has NaN or inf",
    "zero": "L2 norm 0.0000; rows must be L2-normalised", "not_unit": "L2 norm 3.0000",
    "wrong_dim": r"vectors must have shape \(1, 16\), got \(1, 17\)", "one_d": r"got \(16,\)",
    "complex": "vectors has dtype complex64; pass real float32", "bool": "vectors has dtype bool",
    "str": "vectors has dtype <U4", "object": "vectors has dtype object",
}


@pytest.mark.parametrize("kind", sorted(INSERT_CASES))
def test_insert_bad_vectors_named_and_nothing_lost(memory, kind):
    before = _snapshot(memory)
    with pytest.raises(ValueError, match=INSERT_CASES[kind]):
        memory.insert([10_000], _vec(kind))
    assert _snapshot(memory) == before


@pytest.mark.parametrize("kind", ["nan", "inf", "wrong_dim", "complex", "str"])
def test_search_bad_queries_named_and_nothing_lost(memory, kind):
    before = _snapshot(memory)
    name = INSERT_CASES[kind].replace("vectors", "queries").replace(r"\(1, 16\)", r"\(n, 16\)")
    with pytest.raises(ValueError, match=name):
        memory.search(_vec(kind), 3)
    assert _snapshot(memory) == before


def test_search_zero_query_is_answered_not_refused(memory):
    """Policy: a zero query is answered (every score 0): ShardedMemory pads its collective search
    with zero rows, so refusing them would break DDP. Nothing changes in the memory."""
    before = _snapshot(memory)
    res = memory.search(np.zeros((1, D), np.float32), 3, record_hits=False)
    assert (res.ids >= 0).all() and np.allclose(res.scores, 0)
    assert _snapshot(memory) == before


@pytest.mark.parametrize("k, match", [(0, "k=0 is invalid"), (-1, "k=-1"), (2.0, "k=2.0"), (None, "k=None")])
def test_search_bad_k(memory, k, match):
    before = _snapshot(memory)
    with pytest.raises(ValueError, match=match):
        memory.search(unit(np.random.default_rng(2), 1), k)
    assert _snapshot(memory) == before


def test_wrong_id_dtype_and_negative_ids(memory):
    before = _snapshot(memory)
    x = unit(np.random.default_rng(3), 1)
    with pytest.raises(ValueError, match="ids must be a 1-D integer array, got dtype=float64"):
        memory.insert(np.array([1.5]), x)
    with pytest.raises(ValueError, match="ids must be >= 0"):
        memory.insert([-3], x)
    assert _snapshot(memory) == before


@pytest.mark.parametrize("upsert", [False, True])
def test_duplicate_ids_on_insert(memory, upsert):
    """A known id (live or evicted) is refused unless upsert; repeats within one call always are."""
    before = _snapshot(memory)
    x = unit(np.random.default_rng(4), 2)
    with pytest.raises(ValueError, match=r"repeats id\(s\) \[7\] within one call"):
        memory.insert([7, 7], x, upsert=upsert)
    assert _snapshot(memory) == before
    if not upsert:
        for known in (7, 5):  # 7 live, 5 evicted
            with pytest.raises(ValueError, match=rf"ids \[{known}\] are already in the memory; pass upsert=True"):
                memory.insert([known], x[:1])
        assert _snapshot(memory) == before


@pytest.mark.parametrize("upsert", [False, True])
def test_forced_hot_over_capacity_loses_nothing(memory, upsert):
    """Regression: this raised after the ids were mapped (audit failed) and, with upsert, after the
    replaced items were removed: admitted items were lost."""
    before = _snapshot(memory)
    ids = np.arange(60) if upsert else np.arange(1000, 1060)
    with pytest.raises(ValueError, match="tier='hot' with 60 items but the hot budget holds 40"):
        memory.insert(ids, unit(np.random.default_rng(5), 60), tier="hot", upsert=upsert)
    assert _snapshot(memory) == before


def test_bad_tier_and_unknown_ids(memory):
    before = _snapshot(memory)
    with pytest.raises(ValueError, match="tier='cold' is invalid"):
        memory.insert([1001], unit(np.random.default_rng(6), 1), tier="cold")
    with pytest.raises(ValueError, match="cannot evict id 99999: it was never inserted"):
        memory.evict([99999])
    with pytest.raises(ValueError, match="cannot promote id 5: it is evicted"):
        memory.promote([5])
    assert _snapshot(memory) == before


# --- configs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, match", [
    ({"hot_max_bytes": 10}, r"hot_max_bytes=10 is invalid: a hot budget must hold at least one vector \(72 bytes"),
    ({"warm_max_bytes": 10}, "warm_max_bytes=10 is invalid: a warm budget must hold at least one buffered vector"),
    ({"nlist": 10_000}, "nlist=10000 is invalid: more lists than warm items"),
    ({"nlist": 500, "warm_max_items": 100_000, "warm_max_bytes": 1 << 20}, r"training needs 10000 buffered vectors \(1370000 bytes\) but warm_max_bytes=1048576"),
    ({"pq_m": 5}, "pq_m=5 is invalid: pq_m must be a positive divisor of dim=16"),
    ({"hot_max_items": 0, "warm_max_items": 0}, "hot_max_items \\+ warm_max_items must be >= 1"),
    ({"dim": 0}, "dim=0"),
])
def test_memory_config_impossible_values(kw, match):
    with pytest.raises(ConfigError, match=match):
        small_cfg(**kw).validate()


def test_memory_config_unknown_key():
    with pytest.raises(ConfigError, match=r"MemoryConfig: unknown key\(s\) \['hot_budget'\]; valid keys are"):
        MemoryConfig.from_dict({"dim": 8, "hot_budget": 1})


def test_eval_and_reader_configs_k0_and_unknown_keys():
    from luma_pl.evaluation.stream_eval import StreamEvalConfig

    with pytest.raises(ConfigError, match="StreamEvalConfig.k=0 is invalid: use k >= 1"):
        StreamEvalConfig.from_dict({"k": 0})
    with pytest.raises(ConfigError, match=r"ReaderConfig: unknown key\(s\) \['max_bytes'\]"):
        ReaderConfig.from_dict({"max_bytes": 3})
    with pytest.raises(ConfigError, match="ReplayConfig.batch_size=0"):
        ReplayConfig.from_dict({"root": "x", "batch_size": 0})


def test_memory_with_nlist_larger_than_data_waits_in_the_exact_buffer():
    """nlist valid for the budget but more than the data seen so far: nothing trains, every item is
    answered exactly from the buffer (no faiss training on too few points)."""
    rng = np.random.default_rng(7)
    m = TieredMemory(small_cfg(hot_max_items=1, nlist=16))
    x = unit(rng, 30)
    m.insert(np.arange(30), x)
    assert m.warm.index is None and m.audit()["buffer"] == 29
    assert (m.search(x[:5], 1).ids[:, 0] == np.arange(5)).all()
    m.close()


# --- bridge ----------------------------------------------------------------------------------
@pytest.mark.parametrize("s, c, match", [
    (np.ones((2, 4)), torch.ones(2, 5), "s is a ndarray, not a torch.Tensor"),
    (torch.ones(2, 4, dtype=torch.complex64), torch.ones(2, 5), "s has dtype torch.complex64"),
    (torch.ones(2, 4, dtype=torch.bool), torch.ones(2, 5), "s has dtype torch.bool"),
    (torch.ones(2, 4), torch.zeros(2, 5), "c row 0 is all zeros"),
    (torch.full((2, 4), float("inf")), torch.ones(2, 5), "s has 2 row\\(s\\) with NaN/inf"),
    (torch.ones(2, 3), torch.ones(2, 5), "s has dim 3 but the bridge's source dim d_s=4"),
    (torch.ones(3, 4), torch.ones(2, 5), "c has 2 rows but s has 3"),
])
def test_bridge_fit_step_bad_pairs_change_nothing(s, c, match):
    br = StreamingProcrustes(d_s=4, d_c=5, refresh_every=0)
    g = torch.Generator().manual_seed(0)
    br.fit_step(torch.randn(8, 4, generator=g), torch.randn(8, 5, generator=g))
    before = {k: v.clone() for k, v in br.state_dict().items() if torch.is_tensor(v)}
    with pytest.raises(ValueError, match=match):
        br.fit_step(s, c)
    after = br.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


# --- shards ----------------------------------------------------------------------------------


def _read(path, spaces, media, cfg=RAW):
    skips = []
    chunks = list(iter_chunks(str(path), spaces, media, cfg, skips.append))
    return [k for c in chunks for k in c.keys], chunks, skips


def test_text_entries_non_utf8_skipped_empty_kept(tmp_path):
    with tarfile.open(tmp_path / "t-000000.tar", "w") as tar:
        add_member(tar, "a.ts", b"1")
        add_member(tar, "a.txt", "fine ü".encode())
        add_member(tar, "b.ts", b"2")
        add_member(tar, "b.txt", b"\xff\xfe latin-1 \xe9")
        add_member(tar, "c.ts", b"3")
        add_member(tar, "c.txt", b"")
    keys, chunks, skips = _read(tmp_path / "t-000000.tar", {}, ["txt"])
    assert keys == ["a", "c"] and chunks[0].media["txt"] == ["fine ü", ""]
    assert len(skips) == 1 and skips[0].key == "b" and "b.txt: not utf-8" in skips[0].reason


def test_encoders_refuse_empty_and_non_str_text():
    """The reader keeps an empty caption (it is valid UTF-8); the encoder refuses it by index."""
    from luma_pl.encoders import check_texts

    for texts, match in ((["ok", ""], r"texts\[1\] is empty or blank"), (["  \n"], r"texts\[0\] is empty"),
                         ([b"\xff"], r"texts\[0\] is a bytes, not a str"), (["a", None], r"texts\[1\] is a NoneType")):
        with pytest.raises(ValueError, match=match):
            check_texts(texts)


def test_wordllama_encoder_bad_text_and_missing_path(tmp_path):
    from luma_pl.encoders import EncoderConfig, build_encoder

    enc = build_encoder({"kind": "wordllama", "dim": 64})
    with pytest.raises(ValueError, match=r"texts\[0\] is empty or blank"):
        enc.encode_text([""])
    with pytest.raises(ValueError, match="encode_text expects a list of strings, got a single str"):
        enc.encode_text("one string")
    out = enc.encode_text(["non-ascii ü 漢字 ok"])
    assert out.shape == (1, 64) and torch.isfinite(out).all()
    missing = tmp_path / "no_such_model"
    with pytest.raises(ConfigError, match=f"EncoderConfig.path='{missing}' does not exist; point it at the local"):
        EncoderConfig.from_dict({"kind": "minilm", "path": str(missing)})


def _wav(samples: np.ndarray, sr: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, samples.astype(np.float32), sr, format="WAV")
    return buf.getvalue()


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 3), (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()


def test_audio_and_image_payloads_in_a_shard(tmp_path):
    """Corrupt/empty/zero-sample audio and corrupt/truncated images: skipped, counted, named.
    Silent audio is valid (decoded to zeros; ``is_silent`` lets callers drop it); audio at another
    rate is resampled to ``audio_sample_rate`` (policy: accept, never mislabel the rate)."""
    from luma_pl.media import is_silent

    tone = np.sin(np.arange(4410) / 3) * 0.5
    png = _png()
    with ShardSetWriter(tmp_path, "m", 100) as w:
        w.write_event(ts=1, key="ok", media={"wav": _wav(tone, 48000), "png": png})
        w.write_event(ts=2, key="rate44k", media={"wav": _wav(tone, 44100)})
        w.write_event(ts=3, key="silent", media={"wav": _wav(np.zeros(4800), 48000)})
        w.write_event(ts=4, key="emptywav", media={"wav": b""})
        w.write_event(ts=5, key="corruptwav", media={"wav": b"RIFF\x00\x00\x00\x00WAVEjunk"})
        w.write_event(ts=6, key="nosamples", media={"wav": _wav(np.zeros(0), 48000)})
        w.write_event(ts=7, key="corruptpng", media={"png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 40})
        w.write_event(ts=8, key="truncpng", media={"png": png[: len(png) // 2]})
        w.write_event(ts=9, key="emptypng", media={"png": b""})
    keys, chunks, skips = _read(tmp_path / "m-000000.tar", {}, ["png", "wav"], ReaderConfig())
    assert keys == ["ok", "rate44k", "silent"]
    reasons = {s.key: s.reason for s in skips}
    assert set(reasons) == {"emptywav", "corruptwav", "nosamples", "corruptpng", "truncpng", "emptypng"}
    for key, why in reasons.items():
        assert f"{key}." in why and "cannot use media file" in why, why
    assert "empty (0 bytes)" in reasons["emptywav"] and "zero samples" in reasons["nosamples"]
    waves = chunks[0].media["wav"]
    assert waves[1][1] == 48000 and abs(len(waves[1][0]) - 4800) <= 1  # 0.1 s at 44.1k -> 48k
    assert is_silent(waves[2][0]) and not is_silent(waves[0][0])


def test_empty_and_truncated_shards_counted(tmp_path):
    rng = np.random.default_rng(8)
    with ShardSetWriter(tmp_path, "s", 4) as w:
        for i in range(12):
            w.write_event(ts=i, key=f"e{i:02d}", emb={"x": unit(rng, 1, 4)[0]})
    (tmp_path / "s-000001.tar").write_bytes(b"")  # empty file, same name
    cut = tmp_path / "s-000002.tar"
    cut.write_bytes(cut.read_bytes()[:700])  # truncated inside the first member's data
    ds = StreamReplayDataset(ReplayConfig(root=str(tmp_path), batch_size=4, reader=RAW))
    batches = list(ds)
    keys = [k for b in batches for k in b["key"]]
    assert keys == [f"e{i:02d}" for i in range(4)]
    assert len(batches) == 3
    # each damaged shard: its size changed, it cannot be read, and its 4 listed events are counted
    assert sorted(s.code for s in ds.skips) == ["missing_events"] * 2 + ["stale_shard"] * 2 + ["unreadable_shard"] * 2
    assert sum(b["events_skipped"] for b in batches) == 8 and len(keys) + 8 == 12
    assert {s.shard.rsplit("/", 1)[-1] for s in ds.skips} == {"s-000001.tar", "s-000002.tar"}


def test_duplicate_keys_in_a_shard(tmp_path):
    """Same key + extension twice in one sample: corrupt (which one is meant is unknown), counted.
    The same key in two separate samples: both replayed in file order (the reader is streaming and
    keeps no key set); a consumer that inserts by id refuses the second with a named error."""
    with tarfile.open(tmp_path / "d-000000.tar", "w") as tar:
        add_member(tar, "a.ts", b"1")
        add_member(tar, "a.x.npy", npy_bytes(np.ones(4, np.float32) / 2))
        add_member(tar, "a.x.npy", npy_bytes(-np.ones(4, np.float32) / 2))
        add_member(tar, "b.ts", b"2")
        add_member(tar, "b.x.npy", npy_bytes(np.ones(4, np.float32) / 2))
        add_member(tar, "c.ts", b"3")
        add_member(tar, "b.ts", b"4")  # b again, not adjacent: a second sample
    keys, _, skips = _read(tmp_path / "d-000000.tar", {"x": 4}, [])
    assert keys == ["b", "c", "b"]
    assert len(skips) == 1 and skips[0].key == "a" and "duplicate entry 'a.x.npy'" in skips[0].reason


def test_nan_inf_zero_embedding_rows_masked_and_counted(tmp_path):
    from data_modules import write_blocks

    rng = np.random.default_rng(9)
    x = unit(rng, 8, 4)
    x[2, 1] = np.nan
    x[5] = 0.0
    x[6, 0] = np.inf
    write_blocks(tmp_path, keys=[f"k{i}" for i in range(8)], ts=np.arange(8), emb={"x": x}, block_events=8)
    batches = list(StreamReplayDataset(ReplayConfig(root=str(tmp_path), batch_size=8, reader=RAW)))
    (b,) = batches
    assert b["key"] == [f"k{i}" for i in range(8)] and b["skipped"] == 1
    assert b["has"]["x"].tolist() == [True, True, False, True, True, False, False, True]
    assert torch.isfinite(b["emb"]["x"]).all()
    m = TieredMemory(small_cfg(dim=4, pq_m=2))
    ok = b["has"]["x"].numpy()
    m.insert(np.flatnonzero(ok), b["emb"]["x"].numpy()[ok])  # what reaches the memory is insertable
    assert len(m) == 5
    m.close()


def test_forged_npy_header_with_huge_shape_is_corrupt(tmp_path):
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f4", "fortran_order": False, "shape": (1 << 40, 4)})
    with tarfile.open(tmp_path / "h-000000.tar", "w") as tar:
        add_member(tar, "a.ts", b"1")
        add_member(tar, "a.x.npy", head.getvalue() + b"\x00" * 16)
        add_member(tar, "b.ts", b"2")
    keys, _, skips = _read(tmp_path / "h-000000.tar", {"x": 4}, [])
    assert keys == ["b"] and "header declares shape (1099511627776, 4)" in skips[0].reason


def test_out_of_order_timestamps_replayed_in_file_order_and_counted(tmp_path):
    """Policy: the replay keeps file order (ts is an order key, never used to reorder) and counts
    every ts below its predecessor, per batch and as replay/ts_out_of_order in the DataModule."""
    ts = [1, 2, 9, 3, 4, 4, 10, 0]  # decreases at 9->3 and 10->0 (equal is in order)
    with ShardSetWriter(tmp_path, "o", 4) as w:
        for i, t in enumerate(ts):
            w.write_event(ts=t, key=f"e{i}")
    dm = StreamReplayDataModule(root=str(tmp_path), batch_size=3, reader={"decode_media": False})
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert [k for b in batches for k in b["key"]] == [f"e{i}" for i in range(8)]
    assert [t for b in batches for t in b["ts"].tolist()] == ts
    assert sum(b.get("ts_out_of_order", 0) for b in batches) == 2
    for b in batches:
        dm.mark_consumed(b)
    assert dm.metrics()["replay/ts_out_of_order"] == 2.0 and dm.state_dict()["ts_out_of_order"] == 2


def test_replay_root_that_does_not_exist(tmp_path):
    dm = StreamReplayDataModule(root=str(tmp_path / "nope"), batch_size=4)
    with pytest.raises(FileNotFoundError, match="root=.*nope' is not a folder; point it at the shard folder"):
        dm.setup("fit")


def test_bridge_checkpoint_that_does_not_exist(tmp_path):
    from luma_pl.evaluation.stream_eval import StreamEvaluator

    ev = StreamEvaluator(eval={"bridge_checkpoint": str(tmp_path / "missing.ckpt"), "report_dir": None},
                         bridge={"d_s": 4, "d_c": 4}, memory={"dim": 4, "pq_m": 2})
    with pytest.raises(FileNotFoundError, match="bridge_checkpoint=.*missing.ckpt' does not exist"):
        ev.setup("test")
