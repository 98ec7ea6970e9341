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


def test_declared_checks_name_the_setting_and_where_it_was_set(tmp_path):
    from configurator import at_least, between, matches, one_of
    checks = {"batch_size": at_least(1), "learning_rate": between(0.0, 1.0), "compile": one_of(True, False),
              "out_dir": matches(r"[a-z]+", "lower-case letters")}
    cfg = tmp_path / "c.py"
    cfg.write_text("batch_size = 0\n")
    with pytest.raises(ConfigError, match=r"c.py: batch_size must be >= 1, got 0"):
        configure(settings(), [str(cfg)], checks=checks)
    with pytest.raises(ConfigError, match=r"argument '--learning_rate=2': learning_rate must be between 0.0 and 1.0"):
        configure(settings(), ["--learning_rate=2"], checks=checks)
    with pytest.raises(ConfigError, match=r"out_dir must be lower-case letters, got 'OUT'"):
        configure(settings(), ["--out_dir=OUT"], checks=checks)
    sources = {}
    configure(settings(), [str(cfg), "--batch_size=2"], checks=checks, sources=sources)  # the last one counts
    assert sources == {"batch_size": "argument '--batch_size=2'"}


@pytest.mark.parametrize("body, message", [
    ("x = 1 / 0\n", r"c.py, line 1: ZeroDivisionError: division by zero"),
    ("import sys\nsys.exit(0)\n", r"c.py: it calls sys.exit\(0\); a config file only assigns settings"),
    ("batch_size = (\n", r"c.py, line 1: syntax error"),
])
def test_config_file_that_raises_or_exits_is_an_error(tmp_path, body, message):
    cfg = tmp_path / "c.py"
    cfg.write_text(body)
    with pytest.raises(ConfigError, match=message):
        configure(settings(), [str(cfg)])


def test_help_prints_the_comment_beside_each_setting(tmp_path, capsys):
    script = tmp_path / "script.py"
    script.write_text("batch_size = 4  # rows per step\nout_dir = 'out'\nlr = 0.1  # step size, '#' inside\n")
    g = {"batch_size": 4, "out_dir": "out", "lr": 0.1, "__file__": str(script)}
    with pytest.raises(SystemExit):
        configure(g, ["--help"])
    out = capsys.readouterr().out.splitlines()
    assert "  --batch_size=4  # rows per step" in out
    assert "  --out_dir='out'" in out
    assert "  --lr=0.1  # step size, '#' inside" in out


@pytest.mark.slow
def test_every_script_ends_bad_settings_the_same_way():
    """Scripts that read settings at import (export.py, pipeline.py) stop like train.py: one line, exit 2."""
    import subprocess
    import sys
    from conftest import ROOT
    for script in ("export.py", "pipeline.py", "train.py", "sample.py", "serve.py", "eval.py"):
        r = subprocess.run([sys.executable, script, "--no_such_setting=1"], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, (script, r.stderr)
        assert lines[0].startswith("config error: argument '--no_such_setting=1': unknown config key"), lines


@pytest.mark.slow
def test_inference_scripts_end_bad_input_the_same_way(tmp_path):
    """A checkpoint that is not there: one `error: ...` line naming it, exit 2, from each inference script."""
    import subprocess
    import sys
    from conftest import ROOT
    missing = str(tmp_path / "none.pt")
    for script in ("sample.py", "serve.py", "eval.py"):
        args = [f"--init_from={missing}"] + (["--metrics=['loss']", f"--results={tmp_path}/r.json"] if script == "eval.py" else [])
        r = subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
        lines = [line for line in r.stderr.strip().splitlines() if not line.startswith(("Overriding", "sandbox", "note"))]
        assert r.returncode == 2 and lines and lines[-1].startswith("error: ") and missing in lines[-1], (script, r.stderr)
        assert "Traceback" not in r.stderr, (script, r.stderr)


def test_key_value_without_dashes_hints_at_them():
    with pytest.raises(ConfigError, match=r"config file 'batch_size=5': No such file.*did you mean --batch_size=5\?"):
        configure(settings(), ["batch_size=5"])


def test_overriding_lines_only_for_what_changes(capsys):
    g = settings()
    configure(g, ["--batch_size=4", "--out_dir=out", "--seed=3", "--learning_rate=6e-4"])
    assert capsys.readouterr().out == "Overriding: seed = 3\n"


def scratch_settings():
    import os
    import train
    from configurator import config_keys
    from conftest import ROOT
    g = config_keys(vars(train))
    configure(g, [os.path.join(ROOT, "config", "scratch_cpu.py")], checks=train.CHECKS)
    return g


def test_scratch_config_trains_from_scratch_into_its_own_folder():
    """README's "small GPT from scratch" example: random weights, its own out_dir, the task mixture."""
    g = scratch_settings()
    assert g["init_from"] == "scratch" and g["out_dir"] == "out-scratch-cpu"
    # not a folder the main job writes (pipeline.py: out-nanophi-cpu, its base out-nanophi-cpu-base)
    assert not g["out_dir"].startswith("out-nanophi")
    assert {"math", "logic", "chat", "textbook"} <= {t for t, w in g["tasks"].items() if w > 0}
    assert g["n_embd"] % g["n_head"] == 0 and g["max_iters"] < 1000  # eager on CPU, minutes not hours


@pytest.mark.slow
def test_scratch_config_runs_two_iterations(tmp_path):
    """The config itself through train.py (shrunk by overrides), run where a user would run it: the
    checkpoint lands in ./out-scratch-cpu, from random weights."""
    import os
    import subprocess
    import sys
    from conftest import ROOT
    from nanophi import textformat
    from nanophi.checkpoint import load_checkpoint
    from nanophi.datafiles import SplitWriter
    for split in ("train", "val"):
        w = SplitWriter(str(tmp_path / "data" / "math"), split)
        for i in range(8):
            w.add(*textformat.encode_example(textformat.qa("math", f"What is {i}+{i}?", str(2 * i))))
        w.commit()
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), os.path.join(ROOT, "config", "scratch_cpu.py"),
                        f"--data_dir={tmp_path / 'data'}", "--tasks={'math': 1.0}", "--n_layer=1", "--n_head=2",
                        "--n_embd=32", "--block_size=32", "--batch_size=2", "--max_iters=2", "--eval_interval=2",
                        "--dtype=float32"], cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    ck = load_checkpoint(str(tmp_path / "out-scratch-cpu" / "ckpt.pt"))
    assert ck["iter_num"] == 2 and ck["model_args"]["n_embd"] == 32
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith("out")) == ["out-scratch-cpu"]
