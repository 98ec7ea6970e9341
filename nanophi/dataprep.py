"""
The data pipeline every data/<task>/prepare.py runs. A prepare script only says where its
documents come from and how a record becomes examples (textformat renderers); this file does
the rest, streaming, so a multi-GB source is never held in memory. Reading records (readers, hub,
schemas, dedup keys) is nanophi/records.py; the 13-gram filter is nanophi/decontam.py:

    source records -> render -> normalise -> exact dedup -> decontaminate -> near dedup
        -> seeded split by document -> tokenize (threads) -> SplitWriter (atomic) -> meta.json

--source takes offline, hub, a hub dataset's name or a local .jsonl/.parquet/.txt file,
comma-separated for several, '\\,' for a comma inside a path (docs/data.md).

A document is one source record. It may render into several examples (a conversation in three
chat styles); they share its split, its dedup key and its fate, so no conversation sits in both
train and val. The split is a hash of the normalised text with the seed: stable across runs and
machines, independent of order and caps.
"""
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from nanophi import textformat
from nanophi.datafiles import SPLITS, SplitWriter, new_staging, publish, write_eval, write_json_atomic
from nanophi.decontam import NGRAM, Decontaminator
from nanophi.records import (DataError, FieldError, NearDedup, Routed, SourceUnavailable, dedup_key, doc_hash,
                             normalise, resolve_sources, settings, source_parts, split_of, too_big)
from nanophi.tokenizer import EOT_ID, VOCAB_SIZE

BATCH_CHARS = 16_000_000  # a tokenization batch is also flushed at this much text: bounded memory with long records


# ---------------------------------------------------------------------------------------------
# writing

def write_document(writer, ids, mask, where):
    """SplitWriter.add with a clear error when ids do not fit the uint16 files."""
    bad = [i for i in ids if not 0 <= i < 2 ** 16]
    if bad:
        raise DataError(f"{where}: token id {bad[0]} does not fit uint16 (GPT-2 ids are below {VOCAB_SIZE}); "
                        f"the tokenizer is not GPT-2's, or the ids are corrupt")
    writer.add(ids, mask, where)


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
            "| decontam (HE/eval/drop list) | quality dropped | skipped | s | docs/s | tokens/s |")
    rows = [head, "|" + "---|" * 15]
    for m in metas:
        sp, dc = m["splits"], m["decontamination"]
        q = m.get("quality")  # None: no quality filter ran, shown as '-' (not as 0 dropped)
        quality = f"{q['dropped']:,} of {q['dropped'] + q['kept']:,}" if q else "-"
        rows.append(f"| {m['task']} | {', '.join(f'{k} ({v:,})' for k, v in m['sources'].items())} | {m['records']:,} "
                    f"| {sp['train']['documents']:,} | {sp['train']['tokens']:,} | {sp['val']['documents']:,} "
                    f"| {sp['val']['tokens']:,} | {m['dedup']['exact']:,} | {m['dedup']['near']:,} "
                    f"| {dc['humaneval']:,}/{dc['eval_items']:,}/{dc.get('drop_list_dropped', 0):,} | {quality} "
                    f"| {m['skipped']:,} | {m['elapsed_s']:.1f} | {m['docs_per_s']:,.0f} | {m['tokens_per_s']:,.0f} |")
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
    sources = resolve_sources(cfg.source, schemas, offline(cfg) if "offline" in source_parts(cfg.source) else [],
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
