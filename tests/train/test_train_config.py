"""Config loading: unknown keys and wrong types name the key (and the closest valid one), --set checks."""
from pathlib import Path

import pytest

from facerec.config import (
    Config, apply_overrides, config_from_dict, config_to_dict, load_config, save_config,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _write(tmp_path, text, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_unknown_key_names_key_and_closest(tmp_path):
    path = _write(tmp_path, "optim:\n  lrr: 0.1\n")
    with pytest.raises(ValueError, match=r"'optim\.lrr'.*did you mean 'optim\.lr'") as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_unknown_section_names_closest(tmp_path):
    with pytest.raises(ValueError, match=r"'schedual'.*did you mean 'schedule'"):
        load_config(_write(tmp_path, "schedual:\n  total_steps: 10\n"))


def test_wrong_type_names_key_and_type(tmp_path):
    with pytest.raises(TypeError, match=r"data\.batch_size: expected int, got str 'big'"):
        load_config(_write(tmp_path, "data:\n  batch_size: big\n"))
    with pytest.raises(TypeError, match=r"train\.sync_bn: expected bool"):
        load_config(_write(tmp_path, "train:\n  sync_bn: 1\n"))
    with pytest.raises(TypeError, match=r"schedule\.milestones\[1\]: expected int"):
        load_config(_write(tmp_path, "schedule:\n  milestones: [10, 2.5]\n"))
    with pytest.raises(TypeError, match=r"config optim: expected a mapping"):
        config_from_dict({"optim": 0.1})


def test_bad_values_are_value_errors():
    with pytest.raises(ValueError, match=r"train\.amp: got 'fp8', allowed: none, fp16, bf16"):
        config_from_dict({"train": {"amp": "fp8"}})
    with pytest.raises(ValueError, match=r"schedule\.milestones"):
        config_from_dict({"schedule": {"milestones": [30, 20]}})


def test_int_accepted_for_float_and_name_defaults_to_stem(tmp_path):
    cfg = load_config(_write(tmp_path, "optim:\n  lr: 1\n", name="my_run.yaml"))
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.name == "my_run" and cfg.out_dir == Path("runs/my_run")


def test_set_overrides_are_type_checked():
    cfg = apply_overrides(Config(), ["optim.lr=0.05", "model.input_size=112,112", "train.amp=bf16",
                                     "schedule.milestones=[10, 20]", "head.options.scale=64",
                                     "train.out_dir=123"])
    assert cfg.optim.lr == 0.05 and cfg.model.input_size == (112, 112) and cfg.train.amp == "bf16"
    assert cfg.schedule.milestones == (10, 20) and cfg.head.options == {"scale": 64}
    assert cfg.train.out_dir == "123"  # string fields take the text as is
    with pytest.raises(TypeError, match=r"data\.batch_size: expected int, got float 1\.5"):
        apply_overrides(Config(), ["data.batch_size=1.5"])
    with pytest.raises(ValueError, match=r"'schedule\.total_step'.*did you mean 'schedule\.total_steps'"):
        apply_overrides(Config(), ["schedule.total_step=5"])
    with pytest.raises(ValueError, match=r"KEY=VALUE"):
        apply_overrides(Config(), ["optim.lr"])
    with pytest.raises(ValueError, match=r"is a section"):
        apply_overrides(Config(), ["optim=3"])


def test_configs_are_frozen():
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.optim.lr = 1.0  # type: ignore[misc]


def test_save_and_reload_round_trip(tmp_path):
    cfg = apply_overrides(Config(name="x"), ["eval.sets=[a.bin, b.bin]", "model.options.regions=4"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize("name", ["ms1mv2_mobilefacenet", "ms1mv2_drconv_mobilefacenet",
                                  "ms1mv2_condconv_mobilefacenet", "ms1mv2_local_mobilefacenet"])
def test_paper_configs_follow_the_recipe(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.model.name == name.removeprefix("ms1mv2_")
    assert cfg.model.input_size == (112, 96) and cfg.model.embedding_size == 128
    assert cfg.head.name == "amsoftmax"
    assert (cfg.optim.lr, cfg.optim.momentum) == (0.1, 0.9)
    assert (cfg.optim.weight_decay, cfg.optim.weight_decay_last) == (4e-5, 4e-4)
    assert cfg.schedule.total_steps == 420_000
    assert cfg.schedule.milestones == (252_000, 364_000, 406_000) and cfg.schedule.gamma == 0.1
    assert cfg.data.batch_size == 512 and cfg.data.path == "data/ms1m-v2"
    # lr 0.1 belongs to batch 512: the runner scales it for other batches (linear rule)
    from facerec.train.schedule import base_lr
    assert cfg.optim.lr_batch == 512
    assert base_lr(cfg.optim, 512) == 0.1 and base_lr(cfg.optim, 64) == pytest.approx(0.0125)


def test_demo_config_loads():
    cfg = load_config(CONFIGS / "demo.yaml")
    assert cfg.model.name == "drconv_mobilefacenet" and cfg.data.synthetic
    assert cfg.schedule.total_steps <= 1000 and cfg.eval.sets


def test_base_inheritance_merges_mappings_and_replaces_the_rest(tmp_path):
    _write(tmp_path, "name: base_name\nmodel:\n  name: mobilefacenet\n  embedding_size: 64\n"
                     "head:\n  options: {scale: 30.0, margin: 0.35}\neval:\n  sets: [a.bin, b.bin]\n",
           name="root.yaml")
    _write(tmp_path, "base: root.yaml\noptim:\n  lr: 0.5\n", name="mid.yaml")
    sub = tmp_path / "sub"
    sub.mkdir()
    cfg = load_config(_write(sub, "base: ../mid.yaml\nmodel:\n  name: local_mobilefacenet\n"
                                  "head:\n  options: {margin: 0.2}\neval:\n  sets: [c.bin]\n", name="leaf.yaml"))
    assert cfg.name == "leaf"  # never inherited
    assert (cfg.model.name, cfg.model.embedding_size, cfg.optim.lr) == ("local_mobilefacenet", 64, 0.5)
    assert cfg.head.options == {"scale": 30.0, "margin": 0.2}
    assert cfg.eval.sets == ("c.bin",)


def test_missing_base_and_cycle_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"base 'nope\.yaml' not found \(looked for .*nope\.yaml\)"):
        load_config(_write(tmp_path, "base: nope.yaml\n"))
    _write(tmp_path, "base: b.yaml\n", name="a.yaml")
    _write(tmp_path, "base: a.yaml\n", name="b.yaml")
    with pytest.raises(ValueError, match=r"inheritance cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(TypeError, match="'base' must be a file name"):
        load_config(_write(tmp_path, "base: [x.yaml]\n", name="c.yaml"))
    _write(tmp_path, "optim:\n  lrr: 1\n", name="d.yaml")
    with pytest.raises(ValueError, match=r"unknown config key 'optim\.lrr'"):  # a base's keys are checked too
        load_config(_write(tmp_path, "base: d.yaml\n", name="e.yaml"))


def test_paper_configs_state_only_the_model():
    import yaml
    for path in sorted(CONFIGS.glob("ms1mv2_*.yaml")):
        if path.name == "ms1mv2_base.yaml":
            continue
        data = yaml.safe_load(path.read_text())
        assert data == {"base": "ms1mv2_base.yaml", "model": {"name": path.stem.removeprefix("ms1mv2_")}}, path
