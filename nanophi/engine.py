"""
The generation loop that sample.py, eval.py and serve.py all drive.

A Row is one sequence to generate: prompt ids, sampling settings, its own torch.Generator, stop
ids and stop strings. Rows join an Engine at any time; each Engine.step() prefills waiting prompts
(in chunks, a bounded number of tokens per step, so a long prompt never stalls the others) and then
advances every decoding row by one token in ONE forward pass over a shared KV cache in which each
row has its own length (continuous batching). step() returns events (row, text delta, finish
reason); text is decoded with textformat.TextStream (UTF-8 safe, cut before stop strings).

The cache (KVCache; CacheBatch is the slots one forward pass extends) is a fixed pool of slots (max_batch decoding at once, plus cache_slots more): a finished
row's slot keeps its keys and values, and a new prompt that starts with the same tokens (the next
turn of a chat) takes that slot over and prefills only what is new. The least recently used slot
is reused first, so memory stays bounded by the pool.

Sampling of a row depends only on its own logits and generator, so a seeded row gives the same text
however many other rows share its batch.
"""
import random
from collections import namedtuple

import torch
from torch.nn import functional as F

from nanophi import decode
from nanophi.sampling import fit_context, sample_next
from nanophi.textformat import TextStream
from nanophi.tokenizer import EOT_ID


class KVCache:
    """
    Keys and values of every layer for batch_size rows of up to max_len positions, preallocated (no
    torch.cat per step). Each row has its own length, so rows of different lengths decode together in
    one forward pass (continuous batching); a forward pass picks its rows.
    """

    def __init__(self, config, batch_size, max_len, device, dtype):
        hs = config.n_embd // config.n_head
        shape = (config.n_layer, batch_size, config.n_head, max_len, hs)
        # empty, not zeros: a page of it is touched (resident memory) only when written, and clearing a
        # whole block_size-long cache costs as much as tens of generated tokens on a CPU. Rows of
        # different lengths read (masked) past their own end, where an unwritten position may hold
        # NaN, and 0 * NaN is still NaN: CacheBatch clears those positions the first time they are read
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.lens = torch.zeros(batch_size, dtype=torch.long)  # positions filled per row (CPU: read as ints)
        # per row: every position below max(clean, its length) holds a finite value (written or cleared)
        self.clean = [0] * batch_size

    def clear(self, slot, start, end):
        """Zero positions start..end-1 of a row (its dead positions only: start >= its length)."""
        self.k[:, slot, :, start:end] = 0
        self.v[:, slot, :, start:end] = 0

    def batch(self, slots, T, device):
        return CacheBatch(self, slots, T, device)


class CacheBatch:
    """The slots of a KVCache that one forward pass extends by T positions each, and how they attend."""

    def __init__(self, cache, slots, T, device):
        self.cache, self.T = cache, T
        self.slots = list(slots)
        self.lens = cache.lens[self.slots].tolist()
        self.end = max(self.lens) + T  # keys read: 0..end-1
        if self.end > cache.max_len:
            raise ValueError(f"sequence of length {self.end} exceeds the cache's {cache.max_len} positions")
        # consecutive slots attend as one batch (a view of the cache); slots scattered over the
        # cache (the engine keeps finished conversations' slots for reuse) attend one by one, each to a
        # view of its own keys: gathering them into a batch would copy every row's keys at every layer
        contiguous = self.slots == list(range(self.slots[0], self.slots[0] + len(self.slots)))
        self.sel = slice(self.slots[0], self.slots[-1] + 1) if contiguous else None
        self.past = self.lens[0] if len(set(self.lens)) == 1 else None  # rows of equal length: no per-row mask
        for s, p in zip(self.slots, self.lens):
            # rows of different lengths in one view read keys up to `end`, past their own: never-written
            # positions there are cleared once (masked, but 0 * NaN = NaN); other rows read only their own
            if contiguous and self.past is None and max(cache.clean[s], p) < self.end:
                cache.clear(s, max(cache.clean[s], p), self.end)
                cache.clean[s] = self.end
        lens = torch.tensor(self.lens, device=device)
        self.positions = lens[:, None] + torch.arange(T, device=device)  # (B, T)
        self.mask, self.row_masks = None, None
        if not contiguous:  # each row's own mask, built once for every layer
            self.row_masks = [self._chunk_mask(p, device) for p in self.lens]
        elif self.past is None:  # query t of row b sees keys up to its own position
            self.mask = (torch.arange(self.end, device=device) <= self.positions[:, :, None]).unsqueeze(1)
        else:
            self.mask = self._chunk_mask(self.past, device)

    def _chunk_mask(self, past, device):
        """T queries after `past` cached positions: None (one query sees all, or a causal prompt) or a mask."""
        if self.T == 1 or past == 0:
            return None
        return torch.ones(self.T, past + self.T, dtype=torch.bool, device=device).tril(diagonal=past)

    def attend(self, layer, q, k, v):
        """Write this step's keys and values (B, nh, T, hs) into the cache; the attention output (B, nh, T, hs)."""
        ks, vs = self.cache.k[layer], self.cache.v[layer]
        if self.sel is not None and self.past is not None:
            ks[self.sel, :, self.past:self.past + self.T] = k
            vs[self.sel, :, self.past:self.past + self.T] = v
        else:
            for i, (s, p) in enumerate(zip(self.slots, self.lens)):
                ks[s, :, p:p + self.T] = k[i]
                vs[s, :, p:p + self.T] = v[i]
        wide = (lambda t: t.to(q.dtype)) if ks.dtype != q.dtype else (lambda t: t)  # an fp16 cache, fp32 queries
        if self.sel is not None:
            return F.scaled_dot_product_attention(q, wide(ks[self.sel, :, :self.end]), wide(vs[self.sel, :, :self.end]),
                                                  attn_mask=self.mask, is_causal=self.mask is None and self.T > 1)
        out = []
        for i, (s, p, mask) in enumerate(zip(self.slots, self.lens, self.row_masks)):
            out.append(F.scaled_dot_product_attention(q[i:i + 1], wide(ks[s:s + 1, :, :p + self.T]),
                                                      wide(vs[s:s + 1, :, :p + self.T]),
                                                      attn_mask=mask, is_causal=mask is None and self.T > 1))
        return torch.cat(out)

    def advance(self):
        self.cache.lens[self.slots] += self.T
        for s, p in zip(self.slots, self.lens):  # written by this pass (padding included)
            self.cache.clean[s] = max(self.cache.clean[s], p + self.T)


Event = namedtuple("Event", "row text finish")  # finish: None, 'eot' (a stop id), 'stop' (a stop string), 'length'


def row_generator(seed, index=0, device="cpu"):
    """A torch.Generator for row `index` of a request seeded `seed` (None: a random seed); row 0 uses
    the seed itself, so a request with n=1 and one with n=3 agree on their first row."""
    if seed is None:
        seed = random.getrandbits(63)
    return torch.Generator(device=device).manual_seed((seed + index * 0x9E3779B97F4A7C15) % (1 << 64))


def sample_rows(prompts, n, seed, device, key=lambda i, j: (i, j), **settings):
    """n rows per prompt (Row settings as keywords); row j of prompt i samples with
    row_generator(seed, i * n + j), so a text depends on its seed and place, not on batching or on
    how many rows share a step. key(i, j) names each row. eval.py and serve.py build rows this way."""
    return [Row(ids, generator=row_generator(seed, i * n + j, device), key=key(i, j), **settings)
            for i, ids in enumerate(prompts) for j in range(n)]


class Row:
    """One sequence to generate. After it finishes: .text, .finish, .n_tokens (generated, stop id included)."""

    def __init__(self, prompt, max_tokens, temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0,
                 no_repeat_ngram_size=0, stops=(), stop_ids=(EOT_ID,), strip=False, generator=None, key=None,
                 scope=None):
        if not prompt:
            raise ValueError("a row needs at least one prompt token")
        self.prompt, self.max_tokens, self.key = list(prompt), max_tokens, key
        self.scope = scope  # cached prompt tokens are shared only between rows of one scope (one API key)
        self.sampling = dict(temperature=temperature, top_k=top_k or None,
                             top_p=top_p if top_p is not None and top_p < 1 else None,
                             repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size)
        self.stop_ids = list(stop_ids)
        self.generator = generator
        self.stream = TextStream(stops, strip=strip, ignore_eos=EOT_ID not in self.stop_ids)
        self.seen = list(prompt)  # prompt + generated ids: what the repetition controls look at
        self.todo = []  # ids still to feed to the model (the prompt, then each new token)
        self.slot = None
        self.n_tokens = 0
        self.finish = None

    @property
    def text(self):
        return self.stream.text


def common_prefix(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class Engine:
    """Continuous batching over one model. Not thread-safe: one thread adds rows and calls step()."""

    def __init__(self, model, max_batch=8, prefill_chunk=256, cache_slots=4, kv_dtype="auto", prefill_alone=512):
        """prefill_chunk: prompt tokens a step while other rows are decoding (their wait for the next
        token is bounded); prefill_alone: while none is, when nobody waits on the step (llama.cpp's
        default micro-batch, 512: fewer passes over the weights; a 512-token bf16 prefill at 1.04-1.10x
        the rate of 256-token chunks on a 2-core EPYC, side by side). kv_dtype: the KV cache's dtype; 'auto' is fp16 where the Decoder runs (a CPU: half the memory and
        half the reads at long contexts, as llama.cpp's default cache; keys and values rounded to fp16,
        everything else fp32), else the model's. 'float32' keeps model.forward's numbers exactly."""
        self.model = model
        self.kv_dtype = kv_dtype
        self.max_batch, self.prefill_chunk, self.prefill_alone = max_batch, prefill_chunk, prefill_alone
        self.n_slots = max_batch + cache_slots
        self.block_size = model.config.block_size
        self.cache = None  # allocated on first use
        self.slot_row = [None] * self.n_slots  # the row generating in each slot
        self._forget_slots()
        self.waiting, self.rows = [], []  # rows without a slot yet, rows with one (in arrival order)
        self.steps = self.tokens = self.reused = 0  # counters: steps, tokens generated, prompt tokens reused
        self.decoder = None  # nanophi/decode.py's one-call decoding step, made with the cache (False: none)

    # ------------------------------------------------------------------ rows in and out

    def add(self, row):
        self.waiting.append(row)

    def cancel(self, *rows):
        """Drop rows (their client left); their slots keep what was computed for later reuse. One pass
        over the queue for all of them: a request of many rows must not cost rows x queue."""
        gone = set(map(id, rows))
        self.waiting = [r for r in self.waiting if id(r) not in gone]
        for r in [r for r in self.rows if id(r) in gone]:
            self._release(r)

    @property
    def busy(self):
        return bool(self.waiting or self.rows)

    def warm_up(self):
        """One short generation before the first request, as llama.cpp's servers run at start: a
        memory-mapped checkpoint's pages are read in, the cache and the Decoder made, the first calls of
        the kernels paid (the first request at a fresh serve.py otherwise decoded at ~0.8x); then the
        counters and slots are as new."""
        list(self.run([Row([EOT_ID, EOT_ID], 2, temperature=0, stop_ids=())]))  # a prefill, then a decoding step
        self.steps = self.tokens = self.reused = 0
        self._forget_slots()
        self.cache.lens.zero_()

    def _forget_slots(self):
        """What each (idle) slot holds, as at the start: nothing to reuse."""
        self.slot_ids = [[] for _ in range(self.n_slots)]  # the token ids whose keys/values each slot holds
        self.slot_used = [-1] * self.n_slots  # step of last use: least recently used slots go first
        self.slot_prompt = [0] * self.n_slots  # prompt length of the slot's last row (a continuation extends it)
        self.slot_scope = [None] * self.n_slots  # the scope of the slot's last row

    def run(self, rows):
        """Add rows and step until they have all finished; yields their events."""
        rows = list(rows)
        for r in rows:
            self.add(r)
        mine = set(map(id, rows))
        while any(r.finish is None for r in rows):
            for ev in self.step():
                if id(ev.row) in mine:
                    yield ev

    def complete(self, prompt, max_tokens, on_text=None, **row_args):
        """One completion: (text, finish). on_text(piece) gets the text as it comes."""
        row = Row(prompt, max_tokens, **row_args)
        for ev in self.run([row]):
            if ev.text and on_text:
                on_text(ev.text)
        return row.text, row.finish

    def _admit(self):
        while self.waiting and len(self.rows) < self.max_batch:
            row = self.waiting[0]
            free = [s for s in range(self.n_slots) if self.slot_row[s] is None]
            # a slot whose ids this prompt continues (the same conversation, one turn on) is taken over;
            # otherwise the least recently used one (a prefix shared with others is copied by _borrow)
            shared = {s: common_prefix(self.slot_ids[s], row.prompt) if self.slot_scope[s] == row.scope else 0
                      for s in free}
            ours = [s for s in free if 0 < self.slot_prompt[s] <= shared[s]]
            slot = max(ours, key=shared.get) if ours else min(free, key=lambda s: self.slot_used[s])
            self.waiting.pop(0)
            row.slot = slot
            self.slot_row[slot] = row
            self.rows.append(row)
            self._start(row)

    def _start(self, row):
        """Point the row at its slot: reuse the slot's matching prefix, feed the rest of the prompt."""
        prompt = fit_context(row.prompt, self.block_size, row.max_tokens)
        self._alloc()
        s = row.slot
        if self.slot_scope[s] != row.scope:  # another key's tokens: never reused
            self.slot_ids[s], self.slot_scope[s] = [], row.scope
        self.slot_prompt[s] = len(prompt)
        n = min(common_prefix(self.slot_ids[s], prompt), len(prompt) - 1)  # feed at least one token
        self._set_len(s, prompt[:n])
        self.reused += n
        row.todo = prompt[n:]

    def _release(self, row):
        self.rows.remove(row)
        self.slot_row[row.slot] = None
        self.slot_used[row.slot] = self.steps

    def _alloc(self):
        if self.cache is None:
            p = next(self.model.parameters())
            self.decoder = decode.decoder(self.model) or False
            if self.kv_dtype != "auto":
                dtype = getattr(torch, self.kv_dtype)
            else:
                dtype = torch.float16 if self.decoder and p.dtype == torch.float32 else p.dtype
            self.cache = KVCache(self.model.config, self.n_slots, self.block_size, p.device, dtype)

    def _set_len(self, slot, ids):
        self.slot_ids[slot] = list(ids)
        self.cache.lens[slot] = len(ids)

    def _borrow(self, row):
        """Before a prompt's first chunk: copy a longer matching prefix from another slot (the other
        choices of an n > 1 request, or another chat with the same system line)."""
        s = row.slot
        have = len(self.slot_ids[s])
        prompt = self.slot_ids[s] + row.todo
        best, n = None, have
        for o in range(self.n_slots):
            k = min(common_prefix(self.slot_ids[o], prompt), len(prompt) - 1)
            if o != s and k > n and self.slot_scope[o] == row.scope:
                best, n = o, k
        if best is None:
            return
        self.cache.k[:, s, :, have:n] = self.cache.k[:, best, :, have:n]
        self.cache.v[:, s, :, have:n] = self.cache.v[:, best, :, have:n]
        self._set_len(s, prompt[:n])
        self.reused += n - have
        row.todo = prompt[n:]

    # ------------------------------------------------------------------ one step

    @torch.no_grad()
    def step(self):
        """Prefill chunks of waiting prompts (batched), then one decoding forward pass for all other rows."""
        self._admit()
        self.steps += 1
        events = []
        decoding = sorted((r for r in self.rows if len(r.todo) == 1), key=lambda r: r.slot)
        for group in self._prefill_groups(alone=not decoding):
            rows = [r for r, _ in group]
            logits = self._forward(rows, [c for _, c in group])
            done = [i for i, r in enumerate(rows) if not r.todo]  # whole prompt in: its first token
            if done:
                events += self._sample([rows[i] for i in done], logits[done])
        if decoding:
            events += self._sample(decoding, self._forward(decoding, [r.todo for r in decoding]))
        return events

    def _prefill_groups(self, alone=False):
        """This step's prompt chunks (prefill_chunk tokens in all, prefill_alone with no row decoding), in batches of rows: one forward pass
        per batch, shorter chunks padded to the longest while the padding stays small (16 tokens or a
        quarter of the real ones): a few short prompts arriving together cost one pass over the
        weights, not one each, and a short one never doubles the work of a long one."""
        budget, chunks = max(self.prefill_chunk, self.prefill_alone) if alone else self.prefill_chunk, []
        for row in [r for r in self.rows if len(r.todo) > 1]:
            if budget <= 0:
                break
            if row.n_tokens == 0:
                self._borrow(row)
                if self._wait_for(row, chunks):
                    continue
            chunk = row.todo[:budget]
            budget -= len(chunk)
            chunks.append((row, chunk))
        groups = []
        for row, chunk in sorted(chunks, key=lambda rc: len(rc[1])):
            group = groups[-1] + [(row, chunk)] if groups else None
            T = len(chunk)  # the longest so far (sorted)
            real = sum(len(c) for _, c in group) if group else 0
            if group and T * len(group) - real <= max(16, real // 4) \
                    and all(len(self.slot_ids[r.slot]) + T <= self.block_size for r, _ in group):
                groups[-1] = group
            else:
                groups.append([(row, chunk)])
        return groups

    def _wait_for(self, row, chunks):
        """Whether most of the row's prompt is being computed this step for another row (the other
        choices of an n > 1 request): then it waits one step and copies that (_borrow)."""
        have = len(self.slot_ids[row.slot])
        prompt = self.slot_ids[row.slot] + row.todo
        return any(r.scope == row.scope
                   and common_prefix(self.slot_ids[r.slot] + c, prompt) - have >= len(row.todo) // 2 for r, c in chunks)

    def _forward(self, rows, chunks):
        """Feed each row its chunk in one forward pass, shorter chunks padded at the end (the padding's
        keys and values land past the row's length, which the next tokens overwrite); logits (B, vocab)
        at each row's last real position."""
        T = max(map(len, chunks))
        if T == 1 and self.decoder and len(rows) <= self.decoder.max_rows:
            return self._decode(rows, [c[0] for c in chunks])
        dev = self.cache.k.device
        idx = torch.tensor([c + [0] * (T - len(c)) for c in chunks], dtype=torch.long, device=dev)
        ragged = any(len(c) < T for c in chunks)
        last = torch.tensor([len(c) - 1 for c in chunks], device=dev) if ragged else True
        logits, _ = self.model(idx, cache=self.cache, slots=[r.slot for r in rows], last_only=last)
        for r, c in zip(rows, chunks):
            self.slot_ids[r.slot] += c
            r.todo = r.todo[len(c):]
            if ragged:
                self.cache.lens[r.slot] = len(self.slot_ids[r.slot])
        return logits[:, -1, :]

    def _decode(self, rows, ids):
        """One new token per row through the Decoder (the same step as model.forward, in one C++ call)."""
        slots = [r.slot for r in rows]
        lens = self.cache.lens.tolist()
        pos = [lens[s] for s in slots]
        logits = self.decoder.step(ids, slots, pos, self.cache.k, self.cache.v)
        for r, s, p, t in zip(rows, slots, pos, ids):
            self.slot_ids[s].append(t)
            r.todo = []
            self.cache.clean[s] = max(self.cache.clean[s], p + 1)
        self.cache.lens[slots] += 1
        return logits

    def _draw(self, rows, logits):
        """Next ids of rows, rows with the same settings sampled together (each with its own generator)."""
        nxt = [None] * len(rows)
        groups = {}
        for i, row in enumerate(rows):
            if row.sampling["repetition_penalty"] != 1.0 or row.sampling["no_repeat_ngram_size"]:
                key = i  # the repetition controls read each row's own context: alone
            else:
                key = (tuple(sorted(row.sampling.items())), tuple(row.stop_ids))
            groups.setdefault(key, []).append(i)
        for key, idx in groups.items():
            first = rows[idx[0]]
            seen = None if isinstance(key, tuple) else torch.tensor([first.seen], dtype=torch.long,
                                                                    device=logits.device)
            stop = torch.tensor(first.stop_ids, dtype=torch.long, device=logits.device)
            got = sample_next(logits[idx], seen, generator=[rows[i].generator for i in idx], stop=stop,
                              **first.sampling)
            for i, t in zip(idx, got.tolist()):
                nxt[i] = t
        return nxt

    def _sample(self, rows, logits):
        events = []
        for row, nxt in zip(rows, self._draw(rows, logits)):
            row.seen.append(nxt)
            row.n_tokens += 1
            self.tokens += 1
            if nxt in row.stop_ids:
                text = row.stream.close()
                row.finish = "stop" if row.stream.finish == "stop" else "eot"
            else:
                text = row.stream.add(nxt)
                if row.stream.finish:
                    row.finish = row.stream.finish
                elif row.n_tokens >= row.max_tokens:
                    text += row.stream.close()
                    row.finish = row.stream.finish
            if row.finish:
                self._release(row)
            else:
                self._feed(row, nxt)
            events.append(Event(row, text, row.finish))
        return events

    def _feed(self, row, token):
        """The next token to feed; past the context, start over from what fit_context keeps."""
        row.todo = [token]
        if self.cache.lens[row.slot].item() + 1 > self.block_size:
            self._set_len(row.slot, [])
            row.todo = fit_context(row.seen, self.block_size, row.max_tokens - row.n_tokens)
