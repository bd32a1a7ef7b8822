"""The typed config loader: YAML into dataclasses, unknown keys and wrong types rejected by name."""

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from svg_diffusion.config import ConfigError, from_dict, load_config, save_config, to_dict


@dataclass
class Inner:
    depth: int = 2
    widths: tuple[int, ...] = (1, 2)


@dataclass
class Outer:
    name: str
    lr: float = 1e-4
    mode: Literal["running", "batch", "none"] = "running"
    inner: Inner = field(default_factory=Inner)
    layer: Optional[int] = None
    flags: list[bool] = field(default_factory=list)

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


def test_round_trip_through_yaml(tmp_path):
    cfg = Outer(name="x", lr=3e-4, mode="batch", inner=Inner(depth=5, widths=(4, 8)), layer=3, flags=[True])
    path = tmp_path / "c.yaml"
    save_config(cfg, path)
    assert load_config(Outer, path) == cfg
    assert to_dict(cfg)["inner"]["widths"] == [4, 8]


def test_yaml_scientific_notation_without_dot_is_a_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: a\nlr: 1e-4\n")  # PyYAML reads this as the string '1e-4'
    assert load_config(Outer, path).lr == pytest.approx(1e-4)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"name": "a", "dept": 1}, "dept: unknown key"),
        ({"name": "a", "inner": {"depht": 1}}, "inner.depht: unknown key"),
        ({"name": "a", "inner": {"depth": "six"}}, "inner.depth: expected int, got 'six'"),
        ({"name": "a", "inner": {"depth": 2.5}}, "inner.depth: expected int"),
        ({"name": "a", "mode": "batchy"}, "mode: expected one of 'running', 'batch', 'none'"),
        ({"name": "a", "flags": [1]}, "flags[0]: expected true or false"),
        ({"lr": 1.0}, "name: required key is missing"),
        ({"name": "a", "lr": -1.0}, "lr must be positive"),
        ({"name": "a", "inner": {"widths": "12"}}, "inner.widths: expected a list"),
    ],
)
def test_invalid_configs_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        from_dict(Outer, data)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Outer, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, bad)


def test_overrides_apply_dotted_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: a\n")
    cfg = load_config(Outer, path, overrides=["inner.depth=7", "lr=2e-3", "layer=null"])
    assert cfg.inner.depth == 7 and cfg.lr == pytest.approx(2e-3) and cfg.layer is None
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(Outer, path, overrides=["inner.nope=1"])
