"""`make demo` end to end on a small slice of the real demo corpus: shards, train.py, two evaluate.py
replays, the report and the files it points at."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_demo_end_to_end_on_a_corpus_slice(tmp_path, monkeypatch, capsys):
    from luma_pl.demo import main

    monkeypatch.setenv("LUMA_CACHE", str(tmp_path / "cache"))  # a fresh corpus build (300 items)
    assert main(["--out", str(tmp_path / "demo"), "--max-items", "300"]) == 0
    out = capsys.readouterr().out
    assert "frozen trained bridge, eps=0" in out and "bridge learning on the stream" in out

    report = json.loads((tmp_path / "demo" / "demo_report.json").read_text())
    assert report["corpus"]["items"] == 300 and report["train"]["pairs"] == 300
    frozen = report["evaluate"]["frozen trained bridge, eps=0"]
    streaming = report["evaluate"]["bridge learning on the stream"]
    assert frozen["epsilon_source"] == "frozen" and frozen["epsilon_last"] == 0.0
    assert streaming["epsilon_source"] == "interval" and streaming["epsilon_last"] > 0
    for run in (frozen, streaming):
        assert run["events"] == 300 and run["queries"] > 0 and 0.0 <= run["recall@10"] <= 1.0
    assert (tmp_path / "demo" / "train" / "checkpoints" / "last.ckpt").stat().st_size > 0
    for tag in ("frozen", "streaming"):
        assert (tmp_path / "demo" / f"eval_{tag}" / "recall_over_time.png").stat().st_size > 1000
    assert len(list((tmp_path / "demo").rglob("offline-run-*"))) == 3  # train + two replays
