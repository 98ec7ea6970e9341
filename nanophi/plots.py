"""PNG figures: the one way to draw off-screen and write a figure (new_figure, save_png), and the
loss curves from a run's log.jsonl (written by train.py, shown by eval.py)."""
import json
import os

from nanophi.files import atomic_file


def new_figure(size=(7, 4)):
    """(figure, axes) drawn off-screen: no display needed (Colab, servers, CI)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt.subplots(figsize=size)


def save_png(fig, path, dpi=100):
    """Write the figure to path atomically (the old PNG stays until the new one is whole) and free it."""
    import matplotlib.pyplot as plt
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)


def read_log(out_dir):
    """(train records, eval records) of out_dir/log.jsonl, each in iteration order and each iteration
    once (the later record wins: a log from before train.py trimmed resumes may repeat steps); a
    line cut by a kill mid-write is skipped. Empty lists when there is no log."""
    path = os.path.join(out_dir, "log.jsonl")
    found = {"train": {}, "eval": {}}
    if not os.path.isfile(path):
        return [], []
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("type") in found and isinstance(rec.get("iter"), int):
                found[rec["type"]][rec["iter"]] = rec
    return [found["train"][i] for i in sorted(found["train"])], [found["eval"][i] for i in sorted(found["eval"])]


def plot_losses(out_dir):
    """out_dir/loss_<task>.png for every task (and 'all'); returns the paths written."""
    train, evals = read_log(out_dir)
    names = sorted({k for e in evals for k in e["val"]}, key=lambda k: (k == "all", k))
    written = []
    for name in names:
        fig, ax = new_figure((6, 4))
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
        save_png(fig, path, dpi=80)
        written.append(path)
    return written
