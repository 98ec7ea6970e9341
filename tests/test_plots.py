"""nanophi/plots.py: reading log.jsonl as train.py writes it (resumes, kills) and the loss PNGs."""
import json
import os

from nanophi.plots import plot_losses, read_log


def write_log(path, records, tail=""):
    with open(path, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records) + tail)


def test_read_log_each_iteration_once_and_a_cut_line_skipped(tmp_path):
    ev = lambda it, v: {"type": "eval", "iter": it, "val": {"math": v, "all": v}, "train": {"math": v, "all": v}}
    tr = lambda it, loss: {"type": "train", "iter": it, "loss": loss}
    # an older log: an attempt ran iters 0-2, was killed, and the resume from iter 1 ran 1-2 again
    records = [ev(0, 5.0), tr(0, 5.0), tr(1, 4.9), tr(2, 4.8), tr(1, 4.5), tr(2, 4.4), ev(2, 4.3)]
    write_log(tmp_path / "log.jsonl", records, tail='{"type": "train", "iter": 3, "lo')  # killed mid-write
    train, evals = read_log(str(tmp_path))
    assert [(r["iter"], r["loss"]) for r in train] == [(0, 5.0), (1, 4.5), (2, 4.4)]  # the later records win
    assert [r["iter"] for r in evals] == [0, 2]
    paths = plot_losses(str(tmp_path))
    assert sorted(os.path.basename(p) for p in paths) == ["loss_all.png", "loss_math.png"]
    assert all(os.path.getsize(p) > 1000 for p in paths)


def test_read_log_without_a_log(tmp_path):
    assert read_log(str(tmp_path)) == ([], [])
