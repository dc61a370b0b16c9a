"""Replay shards in stream order as batches (the replay batch contract of docs/architecture.md).

``StreamReplayDataset`` (an ``IterableDataset``) builds whole batches inside each DataLoader worker
by numpy slicing of columnar chunks (DataLoader ``batch_size=None``). The batch plan
(``replay_plan.plan_replay``) comes from the manifest, so every rank yields the same number of
batches without talking to the others; a worker that runs short (corrupt samples) pads up to its
planned count. ``StreamReplayDataModule`` wires it into Lightning and saves the number of batches
consumed in checkpoints (``state_dict``), so a resumed run skips exactly those batches.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from luma_pl.configuration import StrictConfig, require
from luma_pl.ranks import initialised, rank_and_world
from luma_pl.stream.ids import event_ids
from luma_pl.threads import limit_cpu_threads

from .replay_plan import ReplayPlan, plan_replay, resume_split
from .shard_format import Manifest, load_manifest
from .shard_reader import SKIP_CODES, EventChunk, ReaderConfig, Skip, concat_chunks, iter_chunks
from .webdataset_source import WebDatasetConfig, iter_webdataset_chunks, scan_webdataset_manifest

log = logging.getLogger("luma_pl.replay")


@dataclass
class ReplayConfig(StrictConfig):
    """Settings of a stream replay."""

    root: str = ""
    """Folder holding ``<name>-%06d.tar`` shards and (optionally) ``manifest.json``."""
    batch_size: int = 256
    """Events per batch (the last batch of a worker may be smaller unless ``drop_last``)."""
    num_workers: int = 0
    """DataLoader worker processes per rank; each reads its own shards."""
    drop_last: bool = False
    """Drop each worker's final partial batch (its events are not replayed)."""
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    """How shard entries are decoded (sizes, media decoding)."""
    pin_memory: bool = False
    """Pin batch tensors (only useful with CUDA)."""
    webdataset: WebDatasetConfig | None = None
    """Replay standard WebDataset shards directly (``data_modules.webdataset_source``: read with the
    webdataset library, media decoded in the DataLoader workers under ``media`` keys ``jpg`` /
    ``flac`` / ``txt``, encoded on the fly by the module's ``media_keys`` encoders) instead of this
    project's shards under ``root``. Local shards only (the batch plan needs their sample counts)."""

    def validate(self) -> None:
        if isinstance(self.webdataset, dict):
            self.webdataset = WebDatasetConfig.from_dict(self.webdataset)
        if self.webdataset is not None:
            self.webdataset.validate()
        require(bool(self.root) or self.webdataset is not None, "ReplayConfig", "root", self.root,
                "pass the folder that holds the shards (or webdataset.urls for standard WebDataset shards)")
        require(self.batch_size > 0, "ReplayConfig", "batch_size", self.batch_size, "use e.g. 256")
        require(self.num_workers >= 0, "ReplayConfig", "num_workers", self.num_workers, "use 0 or more")
        if isinstance(self.reader, dict):
            self.reader = ReaderConfig.from_dict(self.reader)
        self.reader.validate()


@dataclass
class SkipTally:
    """Skips met since the previous batch, carried by the next batch (sum-mergeable counts)."""

    skipped: int = 0
    """Skip records (samples, shards, masked rows)."""
    events: int = 0
    """Events not replayed."""
    reasons: dict[str, int] = field(default_factory=dict)
    """Skip records per reason code (``SKIP_CODES``)."""

    def add(self, s: Skip) -> None:
        self.skipped += 1
        self.events += s.events
        self.reasons[s.code] = self.reasons.get(s.code, 0) + 1

    def clear(self) -> None:
        self.skipped = self.events = 0
        self.reasons = {}

    def into(self, batch: dict) -> dict:
        batch["skipped"], batch["events_skipped"], batch["skip_reasons"] = self.skipped, self.events, self.reasons
        return batch


def empty_batch(manifest: Manifest, skipped: int = 0) -> dict:
    """A B=0 padding batch with every column of the contract."""
    return {
        "key": [], "id": torch.zeros(0, dtype=torch.long), "ts": torch.zeros(0, dtype=torch.long), "topic": [],
        "emb": {s: torch.zeros(0, d) for s, d in manifest.spaces.items()},
        "has": {s: torch.zeros(0, dtype=torch.bool) for s in manifest.spaces},
        "media": {e: [] for e in manifest.media}, "relevant": [],
        "skipped": int(skipped), "events_skipped": 0, "skip_reasons": {}, "padding": True,
    }


def to_batch(chunk: EventChunk, skipped: int) -> dict:
    """Columnar chunk (B rows) -> contract batch; arrays are owned copies (cheap to share)."""
    return {
        "key": chunk.keys,
        "id": torch.from_numpy(event_ids(chunk.keys)),  # (B,) the one id of each event (luma_pl.stream.ids)
        "ts": torch.from_numpy(np.array(chunk.ts, np.int64)),  # (B,)
        "topic": chunk.topics,
        "emb": {s: torch.from_numpy(np.array(a, np.float32)) for s, a in chunk.emb.items()},  # (B, d)
        "has": {s: torch.from_numpy(np.array(h, bool)) for s, h in chunk.has.items()},  # (B,)
        "media": chunk.media,
        # (B) None: not a labelled query; else LongTensor of the relevant items' ids (may be empty)
        "relevant": [None if r is None else torch.from_numpy(event_ids(r)) for r in chunk.relevant],
        "skipped": int(skipped), "events_skipped": 0, "skip_reasons": {}, "padding": False,
    }


def _slice(chunk: EventChunk, i: int, j: int) -> EventChunk:
    return EventChunk(chunk.keys[i:j], chunk.ts[i:j], chunk.topics[i:j],
                      {s: a[i:j] for s, a in chunk.emb.items()}, {s: h[i:j] for s, h in chunk.has.items()},
                      {e: v[i:j] for e, v in chunk.media.items()}, chunk.relevant[i:j])


def rebatch(chunks: Iterator[EventChunk], batch_size: int, drop_last: bool,
            on_drop=None) -> Iterator[EventChunk]:
    """Re-cut a stream of chunks of any size into chunks of exactly ``batch_size`` rows.
    ``on_drop(n)`` is told the ``n`` events a ``drop_last`` tail drops (so they are counted)."""
    buf: deque[EventChunk] = deque()
    have = 0
    for chunk in chunks:
        buf.append(chunk)
        have += len(chunk)
        while have >= batch_size:
            pieces, need = [], batch_size
            while need:
                head = buf[0]
                take = min(need, len(head))
                pieces.append(_slice(head, 0, take))
                if take == len(head):
                    buf.popleft()
                else:
                    buf[0] = _slice(head, take, len(head))
                need -= take
            have -= batch_size
            yield concat_chunks(pieces)
    if have and not drop_last:
        yield concat_chunks(list(buf))
    elif have and on_drop is not None:
        on_drop(have)


class StreamReplayDataset(IterableDataset):
    """Yields this rank's batches; with DataLoader workers, each worker yields its planned share.

    Args:
        cfg: replay settings.
        rank, world_size: this process's place among the ranks.
        resume_batches: batches of this pass already consumed (from a checkpoint); they are skipped.
    """

    def __init__(self, cfg: ReplayConfig, rank: int = 0, world_size: int = 1, resume_batches: int = 0,
                 manifest: Manifest | None = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.manifest = manifest or (scan_webdataset_manifest(cfg.webdataset) if cfg.webdataset is not None
                                     else load_manifest(cfg.root))
        # a WebDataset sample's position in the stream: the events of the shards before its own
        self._offsets = np.cumsum([0] + [sh.events for sh in self.manifest.shards]).tolist()
        self.plan: ReplayPlan = plan_replay(self.manifest, world_size, cfg.num_workers, cfg.batch_size,
                                            cfg.drop_last)
        self.resume_batches = resume_batches
        self.skips: list[Skip] = []  # details, filled in the process that reads (num_workers=0: here)

    def batches_per_pass(self) -> int:
        return self.plan.rank_batches(self.rank)

    def __len__(self) -> int:
        # The whole pass, also after a resume: Lightning restores its batch progress (n done) and
        # compares it with this length, so the tail it runs is len - n, which is what we yield.
        return self.batches_per_pass()

    def _totals(self) -> list[int]:
        return [self.plan.total(self.rank, w) for w in range(self.plan.workers)]

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        physical = info.id if info is not None else 0
        skip, start = resume_split(self._totals(), self.resume_batches)
        worker = (physical + start) % self.plan.workers
        return self._worker_batches(worker, skip[worker])

    def _worker_batches(self, worker: int, skip: int) -> Iterator[dict]:
        """Exactly ``plan.total(rank, worker)`` batches, the first ``skip`` of them not yielded."""
        real = self.plan.real[self.rank][worker]
        total = self.plan.total(self.rank, worker)
        pending = SkipTally()  # skips since the previous yielded batch
        shard_skipped = [0]  # events skipped in the shard being read

        def on_skip(s: Skip) -> None:
            self.skips.append(s)
            pending.add(s)
            shard_skipped[0] += s.events
            log.warning("replay skipped shard=%s key=%r (%s, %d event(s)): %s", s.shard, s.key, s.code, s.events,
                        s.reason)

        def take() -> SkipTally:
            out = SkipTally(pending.skipped, pending.events, dict(pending.reasons))
            pending.clear()
            return out

        def chunks() -> Iterator[EventChunk]:
            # per event, not per sample: after each shard, whatever the manifest lists that was neither
            # replayed nor counted by a skip (a truncated shard's tail, a corrupt block's rows) is counted
            for i in self.plan.shards[self.rank][worker]:
                info = self.manifest.shards[i]
                path = os.path.join(self.cfg.root, info.name)
                got, shard_skipped[0] = 0, 0
                if self.cfg.webdataset is not None:
                    source = iter_webdataset_chunks(info.name, self._offsets[i], self.cfg.webdataset,
                                                    self.cfg.reader.chunk_events, on_skip)
                else:
                    source = iter_chunks(path, self.manifest.spaces, self.manifest.media, self.cfg.reader, on_skip,
                                         expect_bytes=info.bytes)
                for chunk in source:
                    got += len(chunk)
                    yield chunk
                lost = info.events - got - shard_skipped[0]
                if lost > 0:
                    on_skip(Skip(info.name, "", f"{lost} of the {info.events} events manifest.json lists for this "
                                                f"shard were neither replayed nor counted (shard shorter than listed "
                                                "or unreadable past a point)", "missing_events", lost))

        last_ts: list[int | None] = [None]

        def disorder(chunk: EventChunk) -> int:
            """ts decreases in this worker's stream (file order; replayed as is, counted, never reordered)."""
            ts = chunk.ts
            if not len(ts):
                return 0
            n = int((ts[1:] < ts[:-1]).sum()) + int(last_ts[0] is not None and ts[0] < last_ts[0])
            last_ts[0] = int(ts[-1])
            return n

        def batch_of(chunk: EventChunk) -> dict:
            out = take().into(to_batch(chunk, 0))
            out["ts_out_of_order"] = disorder(chunk)
            return out

        def dropped(n: int) -> None:
            on_skip(Skip(self.manifest.shards[self.plan.shards[self.rank][worker][-1]].name, "",
                         f"drop_last dropped this worker's final {n} event(s)", "drop_last", n))

        def planned() -> Iterator[dict]:
            """Exactly ``total`` batches, in order; built even when skipped (skip counts and the ts
            order check must see every chunk)."""
            n = 0
            prev: EventChunk | None = None  # one batch of look-ahead: trailing skips join the last batch
            stream = rebatch(chunks(), self.cfg.batch_size, self.cfg.drop_last, dropped)
            for chunk in stream:
                if n + (prev is not None) == real:
                    # more data than planned: count the surplus (reading it to the end: per event, not one
                    # skip) before the last planned batch goes out, so that batch carries the count
                    extra = len(chunk) + sum(len(c) for c in stream)
                    on_skip(Skip(self.manifest.shards[self.plan.shards[self.rank][worker][-1]].name, "",
                                 f"shards hold {extra} more event(s) than manifest.json lists: not replayed; "
                                 "rebuild the manifest", "extra_events", extra))
                    break
                if prev is not None:
                    yield batch_of(prev)
                    n += 1
                prev = chunk
            if prev is not None:
                yield batch_of(prev)
                n += 1
            while n < total:  # data ran short (corrupt samples) or plan padding
                yield take().into(empty_batch(self.manifest))
                n += 1

        for i, out in enumerate(planned()):
            if i >= skip:
                yield out


def _worker_init(_: int) -> None:
    limit_cpu_threads()


def as_is(batch: dict) -> dict:
    """The DataLoader's collate_fn: batches are already built (the default would walk every key string)."""
    return batch


def replay_dataloader(dataset: StreamReplayDataset, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over ``dataset`` with its own ``num_workers``: whole batches, no collation."""
    k = dataset.cfg.num_workers
    return DataLoader(dataset, batch_size=None, num_workers=k, collate_fn=as_is, pin_memory=pin_memory,
                      worker_init_fn=_worker_init if k else None, persistent_workers=False)


class StreamReplayDataModule(pl.LightningDataModule):
    """LightningDataModule over a shard folder; rank and world size come from the Trainer.

    Running totals: ``batches_consumed`` (this pass), ``events_seen``, ``skipped_total``; these are
    saved in checkpoints. Counting happens in ``on_before_batch_transfer`` during training (the
    step's batch, not Lightning's prefetched one); without a Trainer call ``mark_consumed(batch)``.
    """

    def __init__(self, root: str = "", batch_size: int = 256, num_workers: int = 0, drop_last: bool = False,
                 reader: dict | None = None, pin_memory: bool = False, config: ReplayConfig | None = None,
                 val_root: str | None = None, replicate: bool = False, webdataset: WebDatasetConfig | None = None):
        super().__init__()
        # replicate: every rank replays the whole stream (evaluate.py splits the work by id owner and
        # row instead), so the global step is the same on every rank and N ranks equal one process
        self.replicate = bool(replicate)
        # validation replays a whole stream (default: the training one) from its start, never resumed
        self.val_root = str(val_root) if val_root else None
        self.cfg = config or ReplayConfig.from_dict(dict(
            root=str(root), batch_size=batch_size, num_workers=num_workers, drop_last=drop_last,
            reader=ReaderConfig.from_dict(reader or {}), pin_memory=pin_memory,
            webdataset=None if webdataset is None else WebDatasetConfig.from_dict(dict(
                webdataset if isinstance(webdataset, dict) else dataclasses.asdict(webdataset)))))
        self.cfg.validate()
        self.batches_consumed = 0
        self.events_seen = 0
        self.skipped_total = 0
        self.events_skipped = 0  # events not replayed (per event: a corrupt block counts its rows)
        self.skip_reasons: dict[str, int] = {}  # skip records per reason code (shard_reader.SKIP_CODES)
        self.ts_out_of_order = 0  # events whose ts is below the previous event's (replayed in file order)
        self.dataset: StreamReplayDataset | None = None
        self._resume = 0
        self._pass_events = 0  # events replayed in this pass (all ranks' sum is checked at its end)
        self._resumed_pass = False  # a pass resumed mid-way may replay its events before the resume point

    def _rank_world(self) -> tuple[int, int]:
        if self.replicate:
            return 0, 1
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        return rank_and_world()

    def _check_root(self) -> None:
        if self.cfg.webdataset is None and not Path(self.cfg.root).is_dir():
            raise FileNotFoundError(f"root={self.cfg.root!r} is not a folder; point it at the shard folder")

    def setup(self, stage: str | None = None) -> None:
        rank, world = self._rank_world()
        self._check_root()
        self.dataset = StreamReplayDataset(self.cfg, rank, world)

    def train_dataloader(self) -> DataLoader:
        if self.dataset is None:
            self.setup("fit")
        self.dataset.resume_batches = self._resume  # read by workers when the loader is iterated
        return replay_dataloader(self.dataset, self.cfg.pin_memory)

    def val_dataloader(self) -> DataLoader:
        # a val_root is this project's shards; without one validation replays the training stream
        cfg = ReplayConfig.from_dict({**self.cfg.to_dict(), "reader": self.cfg.reader,
                                      "root": self.val_root or self.cfg.root,
                                      "webdataset": None if self.val_root else self.cfg.webdataset})
        rank, world = self._rank_world()
        if cfg.webdataset is None and not Path(cfg.root).is_dir():
            raise FileNotFoundError(f"val_root={cfg.root!r} is not a folder; point it at the validation shard folder")
        return replay_dataloader(StreamReplayDataset(cfg, rank, world), cfg.pin_memory)

    def test_dataloader(self) -> DataLoader:
        """The whole training stream from its start, never resumed (evaluate.py's replay)."""
        self._check_root()
        return replay_dataloader(StreamReplayDataset(self.cfg, *self._rank_world()), self.cfg.pin_memory)

    def mark_consumed(self, batch: dict) -> None:
        """Count one consumed batch (the hook below does this under a Trainer)."""
        if self._resume and self.dataset is not None:
            # the loader's workers already hold their copy; later passes start from the beginning
            self.dataset.resume_batches = self._resume = 0
        self.batches_consumed += 1
        self.events_seen += len(batch["key"])
        self.skipped_total += int(batch["skipped"])
        self.events_skipped += int(batch.get("events_skipped", 0))
        for code, n in batch.get("skip_reasons", {}).items():
            self.skip_reasons[code] = self.skip_reasons.get(code, 0) + int(n)
        self.ts_out_of_order += int(batch.get("ts_out_of_order", 0))
        self._pass_events += len(batch["key"])
        if self.dataset is not None and self.batches_consumed >= self.dataset.batches_per_pass():
            self.batches_consumed = 0  # pass complete: a checkpoint now resumes at a fresh pass
            self._check_pass_replayed_something()
            self._pass_events = 0

    def _check_pass_replayed_something(self) -> None:
        """A whole pass that replayed 0 events is an error, not a successful run of empty batches
        (e.g. every sample skipped because the shards are not in this project's layout). The
        decision is all-reduced: every rank counts its share, all raise or none does."""
        events = torch.tensor([float(self._pass_events)], dtype=torch.float64)
        if self.dataset is not None and not self.replicate and initialised():
            torch.distributed.all_reduce(events)
        if int(events.item()) > 0 or self._resumed_pass:
            self._resumed_pass = False
            return
        raise RuntimeError(
            f"data.root={self.cfg.root!r}: a whole pass over the stream replayed 0 events; skipped per reason so "
            f"far: {dict(self.skip_reasons) or 'none'}. An event sample needs a 'ts' entry and the spaces it is "
            "used for (see data_modules/shard_format.py); standard WebDataset shards are converted with "
            "`python -m data_modules.build_shards webdataset`")

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.training and isinstance(batch, dict) and "padding" in batch:
            self.mark_consumed(batch)
        return batch

    def metrics(self) -> dict[str, float]:
        """Running totals to log, e.g. ``self.log_dict(self.trainer.datamodule.metrics())``."""
        return {"replay/skipped_total": float(self.skipped_total), "replay/events_seen": float(self.events_seen),
                "replay/batches_consumed": float(self.batches_consumed),
                "replay/ts_out_of_order": float(self.ts_out_of_order),
                "replay/events_skipped": float(self.events_skipped),
                **{f"replay/skipped/{code}": float(self.skip_reasons.get(code, 0)) for code in SKIP_CODES}}

    def _position_settings(self) -> dict:
        """What the saved stream position means something under: the batch plan is a function of
        these (``plan_replay``), so a resume with any of them changed would skip the wrong events.
        num_workers 0 and 1 both mean one reader per rank (the same plan)."""
        import hashlib
        import json

        manifest = (self.dataset.manifest if self.dataset is not None else scan_webdataset_manifest(self.cfg.webdataset)
                    if self.cfg.webdataset is not None else load_manifest(self.cfg.root))
        shards = [[sh.name, int(sh.events)] for sh in manifest.shards]
        return {"batch_size": int(self.cfg.batch_size), "world_size": int(self._rank_world()[1]),
                "num_workers": max(int(self.cfg.num_workers), 1), "drop_last": bool(self.cfg.drop_last),
                "shards": hashlib.sha256(json.dumps(shards).encode()).hexdigest()[:16]}

    def state_dict(self) -> dict:
        return {"batches_consumed": self.batches_consumed, "events_seen": self.events_seen,
                "skipped_total": self.skipped_total, "ts_out_of_order": self.ts_out_of_order,
                "events_skipped": self.events_skipped, "skip_reasons": dict(self.skip_reasons),
                "position_settings": self._position_settings()}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("position_settings")  # absent in checkpoints written before it was recorded
        if isinstance(saved, dict):
            now = self._position_settings()
            flag = {"batch_size": "--data.batch_size", "num_workers": "--data.num_workers",
                    "drop_last": "--data.drop_last", "world_size": "--trainer.devices (x num_nodes)",
                    "shards": "--data.root (the same shards)"}
            for key, fix in flag.items():
                if key in saved and saved[key] != now[key]:
                    what = ("the shard list (names + event counts of the manifest) has fingerprint"
                            if key == "shards" else key)
                    raise ValueError(
                        f"resume: the checkpoint's stream position was saved with {what}={saved[key]!r}, this run has "
                        f"{key}={now[key]!r}; the batches already consumed would be replayed or skipped wrongly. "
                        f"Resume with {fix}={saved[key]!r}, or start a new run (no --ckpt_path)")
        self.batches_consumed = int(state["batches_consumed"])
        self.events_seen = int(state.get("events_seen", 0))
        self.skipped_total = int(state.get("skipped_total", 0))
        self.events_skipped = int(state.get("events_skipped", 0))
        reasons = state.get("skip_reasons", {})
        self.skip_reasons = {str(k): int(v) for k, v in reasons.items()} if isinstance(reasons, dict) else {}
        self.ts_out_of_order = int(state.get("ts_out_of_order", 0))
        self._resume = self.batches_consumed
        self._resumed_pass = self._resume > 0
        if self.dataset is not None:
            self.dataset.resume_batches = self._resume
