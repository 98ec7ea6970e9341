"""
Decontamination beyond 13-grams, as phi-1 did it: every document is compared with every benchmark
problem (HumanEval, and MBPP when a copy is at hand) by

- embedding similarity: cosine of the quality features (hashed words+bigrams offline, or a
  sentence-transformers model), text against the problem's prompt + solution;
- AST similarity of code: each function in a document is parsed, identifiers and literals replaced
  by placeholders (so renaming variables or changing constants does not hide a copy), and its ast.dump
  tokens compared with the benchmark's solution as sets of token 6-grams (Jaccard).

Documents at or above a threshold go to a drop list that data/<task>/prepare.py reads
(--decontam_drop=<file>), beside a Markdown report of the closest pairs per benchmark problem.
"""
import ast
import heapq
import json
import os
import re

from nanophi import records
from nanophi.features import HASHING, Features
from nanophi.records import DataError, normalise, read_humaneval, words

MBPP_HUB = ("google-research-datasets/mbpp", "full")


# ---------------------------------------------------------------------------------------------
# benchmarks

def humaneval_problems():
    return [{"id": p["task_id"], "benchmark": "HumanEval", "text": p["prompt"] + p["canonical_solution"],
             "code": p["prompt"] + p["canonical_solution"]} for p in read_humaneval()]


def mbpp_problems(spec):
    """MBPP from a local mbpp.jsonl (fields task_id, text, code) or 'hub' (needs internet). '' = none."""
    if not spec:
        return []
    if spec == "hub":
        try:
            import datasets
            rows = list(datasets.load_dataset(*MBPP_HUB, split="test"))
        except Exception as e:
            raise DataError(f"mbpp=hub: cannot load {MBPP_HUB[0]} ({type(e).__name__}); MBPP is not available "
                            f"offline: pass --mbpp=<path to mbpp.jsonl> or leave mbpp empty") from None
        where_rows = [(f"{MBPP_HUB[0]}[{i}]", r) for i, r in enumerate(rows)]
    else:
        if not os.path.isfile(spec):
            raise DataError(f"mbpp={spec}: no such file")
        where_rows = list(records.read_jsonl(spec))
    out = []
    for where, r in where_rows:
        if isinstance(r, Exception):
            raise r
        for k in ("text", "code"):
            if not isinstance(r.get(k), str):
                raise DataError(f"{where}: MBPP rows need string fields 'text' and 'code' ({k!r} missing)")
        out.append({"id": f"MBPP/{r.get('task_id', len(out))}", "benchmark": "MBPP",
                    "text": r["text"] + "\n" + r["code"], "code": r["code"]})
    return out


# ---------------------------------------------------------------------------------------------
# AST normalisation

class _Normalise(ast.NodeTransformer):
    """Identifiers -> 'v', function/class names -> 'f', literals -> 'c'; docstrings and annotations dropped."""

    def visit_Name(self, node):
        return ast.copy_location(ast.Name(id="v", ctx=node.ctx), node)

    def visit_arg(self, node):
        node.arg, node.annotation = "v", None
        return node

    def visit_Constant(self, node):
        return ast.copy_location(ast.Constant(value="c"), node)

    def _named(self, node):
        node.name = "f"
        if node.body and isinstance(node.body[0], ast.Expr) and isinstance(getattr(node.body[0], "value", None),
                                                                         ast.Constant) and isinstance(node.body[0].value.value, str):
            node.body = node.body[1:] or [ast.Pass()]
        if hasattr(node, "returns"):
            node.returns = None
        self.generic_visit(node)
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _named


_TOK = re.compile(r"\w+|[^\w\s]")


def ast_tokens(func_node):
    """Tokens of a function's normalised ast.dump (no field names: structure only)."""
    import copy
    tree = _Normalise().visit(copy.deepcopy(func_node))
    return _TOK.findall(ast.dump(tree, annotate_fields=False))


_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|$)", re.S)
_DEF = re.compile(r"^(?:async\s+)?def\s", re.M)


def code_blocks(text):
    """Parseable Python in a document: the whole text, else fenced blocks, else each run of lines from a
    top-level def to the next unindented line."""
    try:
        return [ast.parse(text)]
    except (SyntaxError, ValueError):
        pass
    trees = []
    candidates = _FENCE.findall(text)
    if not candidates:
        lines = text.splitlines()
        for m in _DEF.finditer(text):
            start = text.count("\n", 0, m.start())
            end = start + 1
            while end < len(lines) and (not lines[end].strip() or lines[end][:1].isspace()):
                end += 1
            candidates.append("\n".join(lines[start:end]))
    for c in candidates:
        try:
            trees.append(ast.parse(c))
        except (SyntaxError, ValueError):
            continue
    return trees


MIN_STATEMENTS = 4  # the def and at least three statements: `return len(s)` looks like every one-liner


def functions(text, min_statements=MIN_STATEMENTS):
    """Normalised token lists of the functions in a text that are big enough to compare."""
    out = []
    for tree in code_blocks(text):
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if sum(isinstance(n, ast.stmt) for n in ast.walk(node)) - _has_docstring(node) >= min_statements:
                    out.append(ast_tokens(node))
    return out


def _has_docstring(node):
    first = node.body[0] if node.body else None
    return int(isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str))


def _grams(toks, n=6):
    return [" ".join(toks[i:i + n]) for i in range(max(len(toks) - n + 1, 1))]


class ASTIndex:
    """Benchmark functions as sets of hashed token 6-grams of their normalised trees: the similarity of a
    document function to a benchmark function is the Jaccard index of the two sets, all pairs at once as
    one sparse product (difflib on every pair was ~1000x slower)."""

    def __init__(self, problems):
        from sklearn.feature_extraction.text import HashingVectorizer
        self.vec = HashingVectorizer(analyzer=_grams, n_features=2 ** 20, alternate_sign=False, norm=None, binary=True)
        self.owner, toks = [], []
        for i, p in enumerate(problems):
            for t in functions(p["code"]):
                self.owner.append(i)
                toks.append(t)
        self.n_problems = len(set(self.owner))  # problems with a function big enough to compare
        self.bench = self.vec.transform(toks).T.tocsr()
        self.sizes = self.bench.sum(axis=0).A1

    def best(self, doc_funcs):
        """{problem index: best Jaccard} over the document's functions (zero overlaps left out)."""
        x = self.vec.transform(doc_funcs)
        inter = (x @ self.bench).toarray()
        jac = inter / (x.sum(axis=1).A + self.sizes[None, :] - inter)
        best = {}
        for j, i in enumerate(self.owner):
            v = float(jac[:, j].max())
            if v > best.get(i, 0.0):
                best[i] = v
        return best


# ---------------------------------------------------------------------------------------------
# the scan

def scan(docs, problems, features=HASHING, embed_threshold=0.85, ast_threshold=0.9, batch_size=256, top_k=3,
         progress=True):
    """docs: (where, key, text). Returns (dropped [{"key", "where", "reason"}], closest per problem, counts)."""
    import sys
    from tqdm import tqdm
    feats = Features(features)
    bench = feats([p["text"] for p in problems])
    index = ASTIndex(problems)
    closest = [{"embed": [], "ast": []} for _ in problems]  # min-heaps of (score, where, excerpt)
    dropped, n_docs, n_code = [], 0, 0
    bar = tqdm(desc="decontam", unit=" docs", disable=not progress, file=sys.stderr, mininterval=1.0)

    def keep_top(heap, item):
        heapq.heappush(heap, item) if len(heap) < top_k else heapq.heappushpop(heap, item)

    def flush(batch):
        nonlocal n_docs, n_code
        sims = feats([t for _, _, t in batch]) @ bench.T
        sims = sims.toarray() if hasattr(sims, "toarray") else sims
        for row, (where, key, text) in zip(sims, batch):
            n_docs += 1
            j = int(row.argmax())
            keep_top(closest[j]["embed"], (float(row[j]), where, text[:300]))
            funcs = functions(text)
            n_code += bool(funcs)
            ast_best = index.best(funcs) if funcs else {}
            for i, r in ast_best.items():
                keep_top(closest[i]["ast"], (r, where, text[:300]))
            reasons = []
            if row[j] >= embed_threshold:
                reasons.append(f"embedding {row[j]:.3f} to {problems[j]['id']}")
            hit = max(ast_best.items(), key=lambda kv: kv[1], default=None)
            if hit and hit[1] >= ast_threshold:
                reasons.append(f"AST {hit[1]:.3f} to {problems[hit[0]]['id']}")
            if reasons:
                dropped.append({"key": key, "where": where, "reason": "; ".join(reasons)})
        bar.update(len(batch))

    batch = []
    for d in docs:
        batch.append(d)
        if len(batch) >= batch_size:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    bar.close()
    return dropped, closest, {"documents": n_docs, "with_code": n_code, "dropped": len(dropped),
                              "problems_with_ast": index.n_problems}


def report(title, problems, closest, dropped, counts, settings, notes=()):
    """The Markdown page: settings, counts, dropped documents, then per problem its closest documents."""
    def cell(items):
        items = sorted(items, reverse=True)
        return "<br>".join(f"{s:.3f} {w}" for s, w, _ in items) or "—"

    lines = [f"# Decontamination: {title}", "",
             f"{counts['documents']:,} documents ({counts['with_code']:,} with parseable Python) against "
             f"{len(problems)} benchmark problems ({counts['problems_with_ast']} with a function of at least "
             f"{MIN_STATEMENTS} statements, compared by AST); {counts['dropped']:,} at or above a threshold are dropped.", "",
             "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()), ""]
    lines += [f"- {n}" for n in notes]
    lines += ["", "## Dropped documents", ""]
    lines += [f"- `{d['where']}`: {d['reason']}" for d in dropped[:200]] or ["none"]
    if len(dropped) > 200:
        lines.append(f"- ... and {len(dropped) - 200} more (the drop list has them all)")
    lines += ["", "## Closest documents per problem", "",
              "Embedding: cosine of the features (a problem lists the documents for which it is the nearest). "
              "AST: Jaccard of token 6-grams of normalised syntax trees.", "",
              "| problem | max embedding | closest by embedding | max AST | closest by AST |", "|---|---|---|---|---|"]
    order = sorted(range(len(problems)), key=lambda i: -max([s for s, *_ in closest[i]["ast"]] +
                                                             [s for s, *_ in closest[i]["embed"]] + [0]))
    for i in order:
        c = closest[i]
        me = max((s for s, *_ in c["embed"]), default=0.0)
        ma = max((s for s, *_ in c["ast"]), default=0.0)
        lines.append(f"| {problems[i]['id']} | {me:.3f} | {cell(c['embed'])} | {ma:.3f} | {cell(c['ast'])} |")
    return "\n".join(lines) + "\n"


def read_drop_list(path):
    """The document keys (records.doc_hash of the normalised text) a drop list names."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return {int(d["key"]) for d in data["dropped"]}
    except OSError as e:
        raise DataError(f"decontam_drop={path}: {e.strerror}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"decontam_drop={path}: not a drop list written by data/decontaminate.py ({e})") from None


NGRAM = 13


def _gram_hashes(w, n):
    """Rolling hashes of all word n-grams of w (uint64, wrapping arithmetic): vectorized with numpy."""
    import numpy as np
    h = np.fromiter((hash(x) & 0xFFFFFFFFFFFFFFFF for x in w), dtype=np.uint64, count=len(w))
    if len(w) < n:
        return h[:0]
    acc = np.zeros(len(w) - n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            acc = acc * np.uint64(1000003) + h[k:k + len(acc)]
    return acc


class Decontaminator:
    """Flags documents that share a 13-gram of words with HumanEval or with an eval item.
    Eval items shorter than 13 words (a math question) count when they appear whole."""

    def __init__(self, humaneval=True, eval_texts=()):
        self.grams = {"humaneval": {}, "eval_items": {}}   # kind -> {n: set of n-gram hashes}
        self.n_humaneval = self.n_eval = 0
        he = [p["prompt"] + p["canonical_solution"] for p in read_humaneval()] if humaneval else ()
        for kind, texts in (("humaneval", he), ("eval_items", eval_texts)):
            for t in texts:
                w = words(normalise(t))
                if w:
                    n = min(NGRAM, len(w))
                    self.grams[kind].setdefault(n, set()).update(_gram_hashes(w, n).tolist())
                    if kind == "humaneval":
                        self.n_humaneval += 1
                    else:
                        self.n_eval += 1

    def hit(self, norm):
        """'humaneval', 'eval_items' or None."""
        w = None
        for kind, by_n in self.grams.items():
            for n, table in by_n.items():
                w = w if w is not None else words(norm)
                if len(w) >= n and not table.isdisjoint(_gram_hashes(w, n).tolist()):
                    return kind
        return None
