"""The typed config loader: YAML into dataclasses, unknown keys and wrong types rejected by name."""

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from svg_diffusion.config import ConfigError, ConfigPath, PathOrName, from_dict, load_config, save_config, to_dict


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


@dataclass
class Place:
    root: Optional[ConfigPath] = None


@dataclass
class Located:
    out_dir: ConfigPath
    cache: Optional[ConfigPath] = None
    encoder: PathOrName = "tiny"
    inner: Place = field(default_factory=Place)


def test_paths_in_a_file_are_relative_to_its_folder_and_overrides_to_the_current_one(tmp_path, monkeypatch):
    folder, elsewhere = tmp_path / "configs" / "demo", tmp_path / "elsewhere"
    (folder / "my_encoder").mkdir(parents=True)
    elsewhere.mkdir()
    path = folder / "c.yaml"
    path.write_text("out_dir: ../../runs/x\ncache: /abs/cache\nencoder: tiny\ninner: {root: data}\n")
    monkeypatch.chdir(elsewhere)
    cfg = load_config(Located, path)
    assert cfg.out_dir == str(tmp_path / "runs" / "x") and cfg.cache == "/abs/cache"
    assert cfg.encoder == "tiny"  # a name: no "/"
    assert cfg.inner.root == str(folder / "data")
    cfg = load_config(Located, path, ["out_dir=out", "encoder=./my_encoder", "inner={root: ../pictures}"])
    assert cfg.out_dir == str(elsewhere / "out") and cfg.inner.root == str(tmp_path / "pictures")
    assert cfg.encoder == str(elsewhere / "my_encoder")
    path.write_text("out_dir: .\nencoder: my_encoder\n")
    cfg = load_config(Located, path)
    assert cfg.out_dir == str(folder) and cfg.encoder == "my_encoder"  # a bare word is a name, folder or not
    path.write_text("out_dir: .\nencoder: ./my_encoder\n")
    cfg = load_config(Located, path)
    assert cfg.encoder == str(folder / "my_encoder")
    save_config(cfg, tmp_path / "saved.yaml")  # a saved config holds absolute paths: it loads the same anywhere
    assert load_config(Located, tmp_path / "saved.yaml") == cfg
