import pytest

from configurator import ConfigError, configure


def settings():
    return dict(batch_size=4, learning_rate=6e-4, out_dir="out", compile=True, tasks={"math": 1.0},
                eval_tasks=["math"], init_from="scratch", seed=None, betas=(0.9, 0.95))


def test_file_then_overrides(tmp_path):
    cfg = tmp_path / "c.py"
    cfg.write_text("import math\nbatch_size = 8\ntasks = {'code': 2.0, 'math': 1}\nlearning_rate = 1e-4 * math.sqrt(4)\n")
    g = settings()
    out = configure(g, [str(cfg), "--batch_size=16", "--compile=False", "--eval_tasks=['code','math']",
                        "--out_dir=123", "--seed=7", "--betas=(0.9,0.99)"])
    assert g["batch_size"] == 16 and g["learning_rate"] == pytest.approx(2e-4)
    assert g["tasks"] == {"code": 2.0, "math": 1} and g["eval_tasks"] == ["code", "math"]
    assert g["compile"] is False and g["out_dir"] == "123" and g["seed"] == 7 and g["betas"] == (0.9, 0.99)
    assert out["batch_size"] == 16
    configure(g, ["--learning_rate=1"])  # an int is fine for a float
    assert g["learning_rate"] == 1.0 and isinstance(g["learning_rate"], float)


@pytest.mark.parametrize("argv, message", [
    (["--bach_size=3"], "unknown config key 'bach_size'; did you mean batch_size"),
    (["--batch_size=3.5"], "batch_size must be int"),
    (["--batch_size=true"], "batch_size must be int"),
    (["--compile=maybe"], "compile must be bool"),
    (["--tasks=['math']"], "tasks must be dict"),
    (["--batch_size"], "expected --key=value (write --batch_size=VALUE"),
    (["nonexistent_config.py"], "config file 'nonexistent_config.py'"),
])
def test_errors_name_the_problem(argv, message):
    with pytest.raises(ConfigError) as e:
        configure(settings(), argv)
    assert message in str(e.value)


def test_unknown_key_in_config_file(tmp_path):
    cfg = tmp_path / "c.py"
    cfg.write_text("learning_rat = 1e-3\n")
    with pytest.raises(ConfigError, match=r"c.py: unknown config key 'learning_rat'; did you mean learning_rate"):
        configure(settings(), [str(cfg)])


def test_help_lists_every_setting(capsys):
    with pytest.raises(SystemExit) as e:
        configure(settings(), ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--batch_size=4" in out and "--tasks={'math': 1.0}" in out


def test_constants_are_not_settings():
    g = dict(settings(), EOT_ID=50256, CHAT_HELP="text")
    with pytest.raises(ConfigError, match="unknown config key 'EOT_ID'"):
        configure(g, ["--EOT_ID=1"])
