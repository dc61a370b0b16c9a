"""A user's data that does not match the shard layout fails with a message that names the cause
(issue 14 build 6): tars with other names, and a whole pass that replays 0 events."""

from __future__ import annotations

import tarfile

import pytest
from tar_helpers import add_member
from wds_helpers import img2dataset_shards

from data_modules import ReplayConfig, StreamReplayDataModule, StreamReplayDataset
from data_modules.shard_format import load_manifest


def test_standard_webdataset_names_are_named_and_the_conversion_suggested(tmp_path):
    img2dataset_shards(tmp_path / "wds", shards=2)
    with pytest.raises(FileNotFoundError, match="no shard named <name>-NNNNNN.tar.*2 .tar file\\(s\\).*'00000.tar'"
                                                ".*build_shards webdataset"):
        load_manifest(tmp_path / "wds")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="it holds nothing"):
        StreamReplayDataset(ReplayConfig(root=str(tmp_path / "empty"), batch_size=4))


def test_a_pass_that_replays_no_event_is_an_error_not_a_success(tmp_path):
    """Renamed to this project's names, img2dataset samples have no 'ts': every one is a counted
    skip, and the pass ends with an error naming the reasons instead of a run of empty batches."""
    (tmp_path / "s").mkdir()
    for s in range(2):
        with tarfile.open(tmp_path / "s" / f"wds-{s:06d}.tar", "w") as tar:
            for i in range(3):
                add_member(tar, f"{s}{i:05d}.txt", b"a caption")
    dm = StreamReplayDataModule(root=str(tmp_path / "s"), batch_size=2)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert sum(len(b["key"]) for b in batches) == 0 and len(batches) == dm.dataset.batches_per_pass()
    with pytest.raises(RuntimeError, match="a whole pass over the stream replayed 0 events.*corrupt_sample"):
        for b in batches:
            dm.mark_consumed(b)
