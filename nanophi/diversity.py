"""
How diverse is a set of documents? Phi-1's point was that synthetic data must be varied, not just clean.
For one or more sets (natural and generated side by side):

- distinct-n: distinct word n-grams / all n-grams, on the same number of words from each set (the ratio
  falls as a set grows, so sets are only comparable at an equal budget);
- cluster coverage: KMeans on the quality features (hashed words+bigrams reduced by SVD) fitted on all
  sets together; how many clusters hold at least 1% of a set, and the entropy of its cluster shares;
- lengths: words per document (percentiles and a histogram PNG);
- repeated openings: the most common first five words, and the share of documents whose opening is shared.
"""
import collections
import math
import os
import random
import re

from nanophi.features import Features
from nanophi.files import write_text_atomic
from nanophi.plots import new_figure, save_png

_WORD = re.compile(r"\w+")


def words(text):
    return _WORD.findall(text.lower())


def distinct_n(texts, budget, ns=(1, 2, 3, 4), seed=1337):
    """{n: distinct/total} over the first `budget` words of the texts in a seeded random order."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    toks = []
    for i in order:
        toks.extend(words(texts[i]) + ["\x00"])  # a boundary: n-grams never span two documents
        if len(toks) >= budget:
            break
    toks = toks[:budget]
    out = {}
    for n in ns:
        grams = [tuple(toks[i:i + n]) for i in range(len(toks) - n + 1) if "\x00" not in toks[i:i + n]]
        out[n] = round(len(set(grams)) / max(len(grams), 1), 4)
    return out


def openings(texts, n_words=5, top=10):
    c = collections.Counter(" ".join(words(t)[:n_words]) for t in texts)
    shared = sum(v for v in c.values() if v > 1)
    return c.most_common(top), round(shared / max(len(texts), 1), 4)


def clusters(sets, k=20, seed=1337, max_docs=3000):
    """{name: (clusters holding >= 1% of the set, normalised entropy of its shares)} from one KMeans over all sets."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import TruncatedSVD
    rng = random.Random(seed)
    sample = {name: rng.sample(texts, min(len(texts), max_docs)) for name, texts in sets.items()}
    all_texts = [t for ts in sample.values() for t in ts]
    k = max(2, min(k, len(all_texts) // 5))
    x = Features()(all_texts)
    x = TruncatedSVD(n_components=min(64, x.shape[1] - 1, len(all_texts) - 1), random_state=seed).fit_transform(x)
    labels = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(x)
    out, start = {}, 0
    for name, ts in sample.items():
        lab = labels[start:start + len(ts)]
        start += len(ts)
        shares = [c / len(ts) for c in collections.Counter(lab.tolist()).values()]
        ent = max(0.0, -sum(p * math.log(p) for p in shares) / math.log(k))  # max: no "-0.000" for one cluster
        out[name] = (sum(p >= 0.01 for p in shares), round(ent, 4))
    return out, k


def length_histogram(sets, path):
    fig, ax = new_figure((7, 4))
    top = max(max(len(words(t)) for t in ts) for ts in sets.values())
    for name, ts in sets.items():
        ax.hist([len(words(t)) for t in ts], bins=40, range=(0, top), alpha=0.5, density=True, label=name)
    ax.set_xlabel("words per document")
    ax.set_ylabel("share of documents")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def report(sets, out_dir, k=20, seed=1337):
    """Write diversity.md and lengths.png for {name: [text]}; returns the Markdown."""
    import numpy as np
    os.makedirs(out_dir, exist_ok=True)
    budget = min(sum(len(words(t)) for t in ts) for ts in sets.values())
    distinct = {name: distinct_n(ts, budget, seed=seed) for name, ts in sets.items()}
    cover, k = clusters(sets, k, seed)
    opens = {name: openings(ts) for name, ts in sets.items()}
    names = list(sets)
    rows = [("documents", lambda n: f"{len(sets[n]):,}")]
    rows += [(f"distinct-{g} (first {budget:,} words)", lambda n, g=g: f"{distinct[n][g]:.3f}") for g in (1, 2, 3, 4)]
    rows += [(f"clusters with >= 1% of docs (of {k})", lambda n: str(cover[n][0])),
             ("cluster entropy (0-1)", lambda n: f"{cover[n][1]:.3f}"),
             ("share of docs with a shared opening", lambda n: f"{opens[n][1]:.3f}")]
    for q in (10, 50, 90):
        rows.append((f"words per doc, p{q}",
                     lambda n, q=q: f"{np.percentile([len(words(t)) for t in sets[n]], q):,.0f}"))
    md = ["# Diversity report", "", "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    md += [f"| {label} | " + " | ".join(f(n) for n in names) + " |" for label, f in rows]
    md += ["", "![lengths](lengths.png)", "", "## Most repeated openings (first five words)", ""]
    for n in names:
        md += [f"### {n}", ""] + [f"- {c} x `{o}`" for o, c in opens[n][0][:10]] + [""]
    text = "\n".join(md) + "\n"
    length_histogram(sets, os.path.join(out_dir, "lengths.png"))
    write_text_atomic(os.path.join(out_dir, "diversity.md"), text)
    return text
