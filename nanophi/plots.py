"""Loss-curve PNGs from a run's log.jsonl (written by train.py, shown by eval.py)."""
import json
import os

from nanophi.files import atomic_file


def read_log(out_dir):
    """(train records, eval records) of out_dir/log.jsonl; empty lists when there is no log."""
    path = os.path.join(out_dir, "log.jsonl")
    train, evals = [], []
    if not os.path.isfile(path):
        return train, evals
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            if rec["type"] == "train":
                train.append(rec)
            elif rec["type"] == "eval":
                evals.append(rec)
    return train, evals


def plot_losses(out_dir):
    """out_dir/loss_<task>.png for every task (and 'all'); returns the paths written."""
    import matplotlib
    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt
    train, evals = read_log(out_dir)
    names = sorted({k for e in evals for k in e["val"]}, key=lambda k: (k == "all", k))
    written = []
    for name in names:
        fig, ax = plt.subplots(figsize=(6, 4))
        if name == "all" and train:
            ax.plot([r["iter"] for r in train], [r["loss"] for r in train], alpha=0.4, label="train (batch)")
        for split in ("train", "val"):
            points = [(e["iter"], e[split][name]) for e in evals if name in e.get(split, {})]
            if points:
                ax.plot(*zip(*points), marker="o", label=f"{split} (eval)")
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss")
        ax.set_title(f"{name} loss")
        ax.legend()
        path = os.path.join(out_dir, f"loss_{name}.png")
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format="png", dpi=80)
        plt.close(fig)
        written.append(path)
    return written
