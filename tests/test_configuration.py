import dataclasses

import pytest

from luma_pl.configuration import ConfigError, StrictConfig, require


@dataclasses.dataclass
class _Cfg(StrictConfig):
    k: int = 10
    """How many hits to return."""

    def validate(self) -> None:
        require(self.k >= 1, "_Cfg", "k", self.k, "use k >= 1")


def test_unknown_key_rejected_with_valid_keys_listed():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['kk'\]; valid keys are \['k'\]"):
        _Cfg.from_dict({"kk": 3})


def test_impossible_value_named():
    with pytest.raises(ConfigError, match=r"_Cfg.k=0 is invalid: use k >= 1"):
        _Cfg.from_dict({"k": 0})


def test_round_trip():
    assert _Cfg.from_dict({"k": 5}).to_dict() == {"k": 5}
