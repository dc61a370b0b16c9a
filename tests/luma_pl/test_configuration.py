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


@dataclasses.dataclass
class _Typed(StrictConfig):
    n: int = 1
    """an int"""
    x: float = 0.5
    """a number"""
    flag: bool = False
    """a bool"""
    name: str | None = None
    """a string or None"""
    spaces: tuple[str, ...] = ("a",)
    """strings"""
    inner: _Cfg = dataclasses.field(default_factory=_Cfg)
    """a nested config"""


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("n", "16", "expected an int, got str"), ("n", True, "expected an int, got bool"),
    ("n", 2.0, "expected an int, got float"), ("x", "0.1", "expected a number, got str"),
    ("flag", 1, "expected true or false, got int"), ("name", 3, "expected a string, got int"),
    ("spaces", "ab", "expected a list, got str"), ("spaces", [1], r"_Typed.spaces\[0\]=1 .*string"),
    ("inner", [1], "expected a mapping of _Cfg's fields, got list"), ("inner", {"k": "3"}, "_Cfg.k='3'"),
    ("n", None, "expected an int, got NoneType"), ("inner", {"kk": 1}, "unknown key"),
])
def test_an_ill_typed_value_is_refused_naming_the_field_and_the_type(key, value, expected):
    with pytest.raises(ConfigError, match=expected):
        _Typed.from_dict({key: value})


def test_well_typed_values_pass_and_numbers_are_normalised():
    import numpy as np

    cfg = _Typed.from_dict({"n": np.int64(3), "x": 2, "flag": np.bool_(True), "name": None,
                            "spaces": ["a", "b"], "inner": {"k": 4}})
    assert cfg.n == 3 and type(cfg.n) is int and cfg.x == 2.0 and type(cfg.x) is float
    assert cfg.flag is True and cfg.spaces == ("a", "b") and cfg.inner == _Cfg(k=4)
