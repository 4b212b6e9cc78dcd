import pytest

from utils.config import Config, ConfigError, config_from_dict, config_to_dict, dump_config, load_config


def write(path, text):
    path.write_text(text)
    return path


def test_base_inheritance_and_overrides(tmp_path):
    write(tmp_path / "base.yaml", "model:\n  name: cada_base\n  image_size: [224, 224]\noptim:\n  lr: 1.0e-5\n")
    child = write(tmp_path / "child.yaml", "_base_: base.yaml\noptim:\n  lr: 3.0e-4\nloss:\n  global:\n    weight: 2\n")
    config = load_config(child, ["model.image_size=[384, 128]", "train.epochs=3", "loss.atp.mode=adaptive"])
    assert config.model.name == "cada_base"  # inherited
    assert config.optim.lr == 3e-4  # child wins over base
    assert config.model.image_size == [384, 128]  # override wins over both
    assert config.train.epochs == 3
    assert config.loss.global_.weight == 2.0 and isinstance(config.loss.global_.weight, float)
    assert config.loss.atp.mode == "adaptive"
    assert config.optim.weight_decay == Config().optim.weight_decay  # untouched default


def test_round_trip_through_yaml(tmp_path):
    config = load_config(write(tmp_path / "c.yaml", "train:\n  epochs: 7\nloss:\n  ara:\n    mode: phrase\n"))
    dumped = tmp_path / "resolved.yaml"
    dump_config(config, dumped)
    assert load_config(dumped) == config
    assert config_from_dict(config_to_dict(config)) == config
    assert "global:" in dumped.read_text()  # YAML key name, not the Python field name


def test_unknown_key_names_key_file_and_valid_keys(tmp_path):
    path = write(tmp_path / "bad.yaml", "optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert "optim.learning_rate" in message and str(path) in message and "weight_decay" in message


def test_unknown_key_from_override_names_the_command_line(tmp_path):
    with pytest.raises(ConfigError, match="train.epoch.*command line"):
        load_config(write(tmp_path / "c.yaml", ""), ["train.epoch=3"])


def test_batches_of_one_identity_are_refused(tmp_path):
    path = write(tmp_path / "c.yaml", "")
    load_config(path, ["data.global_batch_size=8", "data.instances_per_id=4"])  # two people per batch
    with pytest.raises(ConfigError, match="data.instances_per_id.*one identity"):
        load_config(path, ["data.global_batch_size=8", "data.instances_per_id=8"])


def test_wrong_types_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="train.epochs.*expected int"):
        load_config(write(tmp_path / "a.yaml", "train:\n  epochs: three\n"))
    with pytest.raises(ConfigError, match="train.epochs.*expected int"):
        load_config(write(tmp_path / "b.yaml", "train:\n  epochs: 2.5\n"))
    with pytest.raises(ConfigError, match="model.image_size.*expected a list"):
        load_config(write(tmp_path / "c.yaml", "model:\n  image_size: 384\n"))
    with pytest.raises(ConfigError, match="expected a section"):
        load_config(write(tmp_path / "d.yaml", "optim: 3\n"))


def test_environment_variables_in_paths(tmp_path, monkeypatch):
    path = write(tmp_path / "c.yaml", "data:\n  root: ${MY_DATA:-fallback}/x\n")
    monkeypatch.delenv("MY_DATA", raising=False)
    assert load_config(path).data.root == "fallback/x"
    monkeypatch.setenv("MY_DATA", "/datasets")
    assert load_config(path).data.root == "/datasets/x"


def test_shipped_configs_load():
    from pathlib import Path
    for path in sorted([*Path("configs").rglob("*.yaml"), *Path("tests/configs").rglob("*.yaml")]):
        load_config(path)  # raises on any unknown key or wrong type


def test_the_synthetic_section_is_nested_and_strict(tmp_path):
    path = write(tmp_path / "s.yaml", "data:\n  dataset: synthetic\n  synthetic: {train_ids: 30, seed: 4}\n")
    config = load_config(path, ["data.synthetic.test_ids=9"])
    assert (config.data.synthetic.train_ids, config.data.synthetic.test_ids, config.data.synthetic.seed) == (30, 9, 4)
    assert config.data.synthetic.val_ids == Config().data.synthetic.val_ids  # untouched default
    assert config_from_dict(config_to_dict(config)) == config
    with pytest.raises(ConfigError, match=r"unknown config key 'data.synthetic.ids'.*valid keys in "
                                          r"'data.synthetic': train_ids, val_ids, test_ids"):
        load_config(path, ["data.synthetic.ids=3"])
    with pytest.raises(ConfigError, match="unknown config key 'data.synthetic_ids'"):
        load_config(path, ["data.synthetic_ids=600"])
    with pytest.raises(ConfigError, match=r"data.synthetic.val_ids.*expected a value >= 1"):
        load_config(path, ["data.synthetic.val_ids=0"])


def test_the_tests_own_config_has_all_four_losses_on():
    from tests.helpers import TINY_CONFIG
    config = load_config(TINY_CONFIG)
    assert set(config.loss.enabled()) == {"global", "itm", "atp", "ara"}
    assert config.model.name == "cada_tiny" and config.data.dataset == "synthetic"
