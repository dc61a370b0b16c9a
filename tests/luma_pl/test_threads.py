import pytest
import torch

from luma_pl.threads import default_num_threads, limit_cpu_threads


def test_limit_sets_torch_threads():
    assert limit_cpu_threads(1) == 1
    assert torch.get_num_threads() == 1


def test_env_var_is_validated(monkeypatch):
    monkeypatch.setenv("LUMA_NUM_THREADS", "two")
    with pytest.raises(ValueError, match="LUMA_NUM_THREADS='two'"):
        default_num_threads()
    monkeypatch.setenv("LUMA_NUM_THREADS", "0")
    with pytest.raises(ValueError, match="must be >= 1"):
        default_num_threads()


def test_bad_argument_named():
    with pytest.raises(ValueError, match="num_threads=0"):
        limit_cpu_threads(0)
