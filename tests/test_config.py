"""Tests for utils/config.py: loading, command-line overrides, saving."""
import argparse
import glob
import os

import pytest

from utils.config import DEFAULTS, apply_overrides, load_config, parse_args, read_yaml, save_config
from utils.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def base_cfg():
    return {
        "seed": 1,
        "data": {"name": "cifar10", "root": "data/x", "random_flip": True},
        "model": {"params": {"dim": 128, "dim_mults": [1, 2, 2, 2], "dropout": 0.1}},
        "train": {"lr": 0.0002, "batch_size": 128, "keep_ckpts": 3, "resume": None,
                  "mixed_precision": None, "ema_warmup": True},
    }


def test_every_shipped_config_is_the_defaults_plus_its_own_keys():
    paths = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))
    assert len(paths) == 6
    defaults = read_yaml(DEFAULTS)
    for p in paths:
        cfg = load_config(p)
        assert list(cfg) == ["seed", "data", "model", "diffusion", "train"], p
        assert {k: list(v) for k, v in cfg.items() if isinstance(v, dict)} == \
            {k: list(v) for k, v in defaults.items() if isinstance(v, dict)}, p       # every key, in one order
        own = read_yaml(p)
        for section, values in cfg.items():
            if isinstance(values, dict) and section != "model":
                for k, v in values.items():
                    assert v == own.get(section, {}).get(k, defaults[section][k]), (p, section, k)
    cifar = load_config(os.path.join(ROOT, "configs", "ddpm_cifar10.yaml"))
    assert cifar["model"] == defaults["model"] and cifar["diffusion"] == defaults["diffusion"]
    fmnist = load_config(os.path.join(ROOT, "configs", "ddpm_fashion_mnist.yaml"))["model"]["params"]
    assert fmnist == dict(defaults["model"]["params"], in_channels=1, out_channels=1, dim=64)


def test_nested_list_and_int_override():
    cfg = apply_overrides(base_cfg(), ["--model.params.dim", "64",
                                       "--model.params.dim_mults", "[1,2,2]"])
    assert cfg["model"]["params"]["dim"] == 64
    assert cfg["model"]["params"]["dim_mults"] == [1, 2, 2]


def test_null_override_and_any_value_for_null():
    cfg = apply_overrides(base_cfg(), ["--data.root", "~", "--train.resume", "latest",
                                       "--train.mixed_precision=bf16"])
    assert cfg["data"]["root"] is None
    assert cfg["train"]["resume"] == "latest" and cfg["train"]["mixed_precision"] == "bf16"
    cfg = apply_overrides(cfg, ["--train.resume", "null"])
    assert cfg["train"]["resume"] is None
    for key in ("--train.lr", "--train.batch_size", "--train.ema_warmup", "--model.params.dim_mults"):
        with pytest.raises(UserError, match="got null"):
            apply_overrides(base_cfg(), [key, "~"])


def test_equals_form_and_floats():
    cfg = apply_overrides(base_cfg(), ["--train.lr=1e-4", "--model.params.dropout", "0"])
    assert cfg["train"]["lr"] == 1e-4 and isinstance(cfg["train"]["lr"], float)
    assert cfg["model"]["params"]["dropout"] == 0.0
    assert isinstance(cfg["model"]["params"]["dropout"], float)
    cfg = apply_overrides(base_cfg(), ["--train.lr", "3E-5", "--seed=7"])
    assert cfg["train"]["lr"] == 3e-5 and cfg["seed"] == 7


def test_str_key_keeps_text_yaml_reads_as_number():
    cfg = apply_overrides(base_cfg(), ["--data.root", "2024"])
    assert cfg["data"]["root"] == "2024"


def test_unknown_key_suggests_closest():
    with pytest.raises(UserError) as e:
        apply_overrides(base_cfg(), ["--train.lrr", "1"])
    msg = str(e.value)
    assert "unknown config key 'train.lrr'" in msg and "train.lr" in msg
    with pytest.raises(UserError, match="not a section"):
        apply_overrides(base_cfg(), ["--train.lr.x", "1"])
    with pytest.raises(UserError, match="missing its value"):
        apply_overrides(base_cfg(), ["--train.lr"])
    with pytest.raises(UserError, match="missing its value"):
        apply_overrides(base_cfg(), ["--train.lr", "--seed", "1"])


def test_wrong_type_message():
    with pytest.raises(UserError) as e:
        apply_overrides(base_cfg(), ["--train.batch_size", "12a"])
    assert str(e.value) == ("config key 'train.batch_size' expects int, got str '12a' "
                            "(from --train.batch_size)")
    with pytest.raises(UserError, match="expects list"):
        apply_overrides(base_cfg(), ["--model.params.dim_mults", "3"])
    with pytest.raises(UserError, match="expects int"):
        apply_overrides(base_cfg(), ["--train.batch_size", "1.5"])


def test_bool_and_int_do_not_mix():
    for key in ("--train.batch_size", "--train.lr"):
        with pytest.raises(UserError, match="got bool"):
            apply_overrides(base_cfg(), [key, "true"])
    with pytest.raises(UserError, match="expects bool, got int"):
        apply_overrides(base_cfg(), ["--train.ema_warmup", "1"])
    assert apply_overrides(base_cfg(), ["--train.ema_warmup", "false"])["train"]["ema_warmup"] is False


def test_does_not_mutate_input():
    cfg = base_cfg()
    out = apply_overrides(cfg, ["--model.params.dim_mults", "[1]", "--train.lr", "0.1"])
    assert cfg == base_cfg()
    assert out["model"]["params"]["dim_mults"] is not cfg["model"]["params"]["dim_mults"]


def test_missing_and_invalid_files(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(UserError, match="nope.yaml"):
        load_config(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\nb: 3\n")
    with pytest.raises(UserError, match="bad.yaml.*not valid YAML") as e:
        load_config(bad)
    assert "\n" not in str(e.value)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="list.yaml.*mapping"):
        load_config(lst)


def test_save_load_round_trip(tmp_path):
    cfg = apply_overrides(base_cfg(), ["--train.lr", "1e-4"])
    path = tmp_path / "sub" / "config.yaml"
    save_config(cfg, path)
    assert load_config(path, defaults=None) == cfg
    assert list(load_config(path, defaults=None)) == list(cfg)  # key order kept
    assert os.listdir(path.parent) == ["config.yaml"]  # no temp file left behind
    full = load_config(os.path.join(ROOT, "configs", "ddpm_tiny.yaml"))
    save_config(full, path)                             # a run's resolved config.yaml loads as a config again
    assert load_config(path) == full


def test_parse_args(tmp_path):
    path = tmp_path / "c.yaml"
    save_config(base_cfg(), path)
    parser = argparse.ArgumentParser()
    parser.add_argument("-c", "--config")
    parser.add_argument("--out", default="runs")
    args, cfg = parse_args(parser, ["-c", str(path), "--train.lr", "1e-4", "--out", "o",
                                    "--data.random_flip=false"], defaults=None)
    assert args.out == "o" and cfg["train"]["lr"] == 1e-4 and cfg["data"]["random_flip"] is False
    with pytest.raises(UserError, match="unexpected argument 'stray'"):
        parse_args(parser, ["-c", str(path), "stray"], defaults=None)


def test_config_files_are_checked_against_the_defaults(tmp_path):
    parser = argparse.ArgumentParser()
    parser.add_argument("-c", "--config")
    # a config of an older version of the repo, holding every key of its day but not the newer ones: works, the
    # missing keys take their defaults; its own values (explicit speed switches among them) are kept
    old = tmp_path / "old.yaml"
    full = load_config(os.path.join(ROOT, "configs", "ddpm_tiny.yaml"))
    del full["train"]["fast"], full["train"]["fid_steps"]
    full["train"]["flat_params"] = False
    save_config(full, old)
    _, cfg = parse_args(parser, ["-c", str(old), "--train.lr", "1e-4"])
    assert cfg["train"]["fast"] is False and cfg["train"]["fid_steps"] == 100 and cfg["train"]["flat_params"] is False
    assert cfg["train"]["lr"] == 1e-4 and cfg["data"]["img_size"] == 16
    # a typo in the file (which overrides cannot catch: they are checked against the file): one line, before the
    # overrides; model.params is build_model's to check
    cfg = read_yaml(os.path.join(ROOT, "configs", "ddpm_tiny.yaml"))
    cfg["train"]["lrr"] = cfg["train"].pop("lr")
    cfg["model"]["params"]["anything"] = 1
    typo = tmp_path / "typo.yaml"
    save_config(cfg, typo)
    with pytest.raises(UserError, match=r"^config '.*typo.yaml' has unknown key\(s\) train.lrr; did you mean "
                                        r"train.lr\?$"):
        parse_args(parser, ["-c", str(typo), "--train.lr", "1e-4"])
    cfg["train"]["lr"] = cfg["train"].pop("lrr")
    cfg["optimizer"] = {"name": "adam"}
    save_config(cfg, typo)
    with pytest.raises(UserError, match="unknown key.*optimizer.name; the valid keys are those of "
                                        "configs/defaults.yaml"):
        parse_args(parser, ["-c", str(typo)])
    args, _ = parse_args(parser, ["-c", str(typo)], defaults=None)     # without defaults: the file alone
