"""
Serve a trained model: an OpenAI-compatible API and a small web chat page.

    python serve.py                                   # out/best.pt on http://127.0.0.1:8000
    python serve.py --init_from=out/ckpt.pt --port=8080 --api_key=secret
    python serve.py --init_from=gpt2 --model_name=gpt2 --temperature=0.7

Routes: POST /v1/chat/completions, POST /v1/completions (stream: true = server-sent events
ending in "data: [DONE]"), GET /v1/models, GET /health, GET / (the page) and its own assets.

The model runs in one worker thread driving nanophi/engine.py: up to max_batch sequences decode
together in one forward pass per step (continuous batching), and a conversation that continues
reuses its KV cache. Flags, request fields and scheduling: docs/serving.md.
"""
import asyncio
import hmac
import json
import math
import os
import queue
import sys
import threading
import time
import traceback
import uuid

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from configurator import ConfigError, at_least, configure, one_of, run_main
from nanophi import textformat
from nanophi.checkpoint import default_out_dir, load_for_inference
from nanophi.engine import Engine, sample_rows
from nanophi.device import autocast
from nanophi.tasks import CHAT_TASKS
from nanophi import tokenizer
from nanophi.tokenizer import encode, get_tokenizer

# -----------------------------------------------------------------------------
# settings (override with a config file or --key=value)
init_from = "resume"  # 'resume' (out_dir's best.pt, else ckpt.pt), a .pt file, a gpt2 name, a transformers dir
out_dir = default_out_dir()  # default: out/ if it holds a checkpoint, else the most recently trained out*/ folder
which = "best"  # with init_from='resume': 'best' or 'latest'
block_size = None  # None: the checkpoint's context length; a number crops or grows it
device = "auto"
dtype = "auto"  # float32 on CPU, bf16 on Ampere+, fp16 on older GPUs
weights = "auto"  # fp32 | bf16 (CPUs with avx512_bf16/amx) | int8 (CPU) | auto (nanophi/weights.py)
host = "127.0.0.1"  # loopback only; use 0.0.0.0 (with an api_key) to serve a network
port = 8000
api_key = ""  # or the NANOPHI_API_KEY environment variable; empty: no auth; "k1,k2": one key per user
model_name = "nanophi"  # the id in /v1/models
# sampling defaults, for requests that do not set them
temperature = 0.8
top_k = 200
top_p = 1.0
repetition_penalty = 1.0
max_tokens = 256
max_tokens_cap = 1024  # a request asking for more gets a 400
max_n = 8  # most choices per request
chat_style = "nanophi"  # speaker markers (textformat.CHAT_STYLES)
system = ""  # default system line for chats that send none
# limits
max_request_bytes = 1 << 20  # bigger bodies get a 413
max_batch = 8  # sequences decoding together in one forward pass (continuous batching); more wait in the queue
prefill_chunk = 256  # prompt tokens prefilled per step: a long prompt never stalls the others for long
cache_slots = 8  # finished conversations whose KV cache is kept for their next turn (least recently used go)
max_queue = 256  # waiting requests beyond this get a 503
allowed_hosts = ""  # Host headers answered, besides loopback names and --host: "my.example,10.0.0.5" or "*"
timeout_header = 10  # seconds a connection may take to send a request's headers, and a body's read
timeout_keep_alive = 5  # seconds an idle keep-alive connection stays open
limit_concurrency = 256  # open connections beyond this get a 503
drain_timeout = 10  # on SIGTERM: seconds in-flight requests get to finish before they end with an error
cors_origins = ""  # other web apps allowed to call the API from a browser: "https://a.example,https://b.example" or "*"
access_log = True
# -----------------------------------------------------------------------------
CHECKS = {  # checked once every config file and --key=value is in (configurator.py)
    "which": one_of("best", "latest"), "block_size": at_least(1), "max_tokens": at_least(1),
    "max_batch": at_least(1), "prefill_chunk": at_least(1), "cache_slots": at_least(0), "max_queue": at_least(0),
    "chat_style": one_of(*textformat.CHAT_STYLES), "dtype": one_of("auto", "float32", "bfloat16", "float16"),
    "timeout_header": at_least(1), "timeout_keep_alive": at_least(1), "limit_concurrency": at_least(1),
    "drain_timeout": at_least(0),
}

_STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nanophi", "static")
# the page's assets: a fixed table, so no request path ever reaches the file system
_ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}


class APIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status, message, param=None, code=None, type="invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self):
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# -----------------------------------------------------------------------------
# request parsing: every field checked by hand, so each error names the field and what is wrong

def _kind(v):
    return "null" if v is None else {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(v), "number")


def field(body, key, types, default=None):
    """body[key] if present and of an allowed type (bool is never a number), else default."""
    v = body.get(key)
    if v is None:
        return default
    names = {int: "an integer", float: "a number", str: "a string", bool: "a boolean", list: "an array",
             dict: "an object"}
    ok = isinstance(v, types) and not (isinstance(v, bool) and bool not in types)
    if float in types and isinstance(v, float) and not math.isfinite(v):
        ok = False
    if not ok:
        want = " or ".join(names[t] for t in types if not (t is int and float in types))
        raise APIError(400, f"'{key}' must be {want}, got {_kind(v)} {json.dumps(v)[:60]}", key, "invalid_type")
    return v


def number(body, key, default, lo, hi, integer=False, lo_open=False):
    v = field(body, key, (int,) if integer else (int, float), default)
    if v is None:
        return None
    if v < lo or v > hi or (lo_open and v == lo):
        lo_txt = f"> {lo}" if lo_open else f">= {lo}"
        raise APIError(400, f"'{key}' must be {lo_txt} and <= {hi}, got {v}", key, "invalid_value")
    return v


def unsupported(body):
    """OpenAI features this server cannot honour: refuse them rather than silently ignore them."""
    for key in ("presence_penalty", "frequency_penalty"):
        if body.get(key) not in (None, 0, 0.0):
            raise APIError(400, f"'{key}' is not supported; use repetition_penalty (e.g. 1.2)", key, "unsupported")
    for key in ("logprobs", "top_logprobs", "tools", "functions", "logit_bias", "suffix"):
        if body.get(key) not in (None, False, [], {}, "", 0):
            raise APIError(400, f"'{key}' is not supported by this server", key, "unsupported")
    if body.get("best_of") not in (None, 1):
        raise APIError(400, "'best_of' is not supported; use n", "best_of", "unsupported")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise APIError(400, "'response_format' other than {\"type\": \"text\"} is not supported", "response_format",
                       "unsupported")


def sampling(body, cfg):
    """The generation settings of a request (both endpoints), defaults from the server's flags."""
    unsupported(body)
    model = field(body, "model", (str,))
    if model is not None and model != cfg["model_name"]:
        raise APIError(404, f"The model '{model}' does not exist; this server serves '{cfg['model_name']}'",
                       "model", "model_not_found")
    mt = body.get("max_completion_tokens")
    key = "max_completion_tokens" if mt is not None else "max_tokens"
    mt = number(body, key, cfg["max_tokens"], 1, 1 << 62, integer=True)
    if mt > cfg["max_tokens_cap"]:
        raise APIError(400, f"'{key}' is {mt}, more than this server's cap of {cfg['max_tokens_cap']}", key,
                       "max_tokens_exceeded")
    stop = field(body, "stop", (str, list), [])
    stop = [stop] if isinstance(stop, str) else stop
    if len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise APIError(400, "'stop' must be a non-empty string or an array of up to 4 non-empty strings", "stop",
                       "invalid_value")
    options = field(body, "stream_options", (dict,), {})
    return dict(
        max_tokens=mt,
        temperature=number(body, "temperature", cfg["temperature"], 0, 2),
        top_p=number(body, "top_p", cfg["top_p"], 0, 1, lo_open=True),
        top_k=number(body, "top_k", cfg["top_k"], 0, tokenizer.VOCAB_SIZE, integer=True),
        repetition_penalty=number(body, "repetition_penalty", cfg["repetition_penalty"], 0, 10, lo_open=True),
        n=number(body, "n", 1, 1, cfg["max_n"], integer=True),
        seed=number(body, "seed", None, -(1 << 63), (1 << 63) - 1, integer=True),
        stop=stop,
        ignore_eos=field(body, "ignore_eos", (bool,), False),
        stream=field(body, "stream", (bool,), False),
        include_usage=bool(field(options, "include_usage", (bool,), False)),
    )


def style_of(body, cfg):
    style = field(body, "chat_style", (str,), cfg["chat_style"])
    if style not in textformat.CHAT_STYLES:
        raise APIError(400, f"'chat_style' must be one of {', '.join(textformat.CHAT_STYLES)}, got {style!r}",
                       "chat_style", "invalid_value")
    return style


def tag_of(body, default):
    tag = field(body, "tag", (str,), default)
    if tag is None:
        return None
    try:
        return textformat.task_of(tag)
    except ValueError as e:
        raise APIError(400, f"'tag': {e}", "tag", "invalid_value") from None


def message_text(m, i):
    """A message's content: a string, or OpenAI's array of {"type": "text", "text": ...} parts."""
    content = m.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise APIError(400, f"messages[{i}].content must be a string or an array of text parts, got "
                        f"{_kind(content)}", f"messages[{i}].content", "invalid_type")


def check_context(n_prompt, context_len, param):
    if n_prompt >= context_len:
        raise APIError(400, f"the prompt is {n_prompt} tokens; the model's context is {context_len} tokens, and the "
                            f"prompt must leave room for at least one new token. Shorten it"
                            + (" or send trim_history: true" if param == "messages" else ""),
                       param, "context_length_exceeded")


def parse_chat(body, cfg, context_len):
    """-> (prompt ids, sampling settings, chat info for cutting replies, number of dropped turns)."""
    params = sampling(body, cfg)
    msgs = body.get("messages")
    if msgs is None:
        raise APIError(400, "'messages' is required: an array of {role, content} objects", "messages",
                       "missing_required_parameter")
    if not isinstance(msgs, list) or not msgs:
        raise APIError(400, "'messages' must be a non-empty array of {role, content} objects", "messages",
                       "invalid_type")
    sys_lines, turns = [], []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise APIError(400, f"messages[{i}] must be an object with role and content", f"messages[{i}]",
                           "invalid_type")
        role = m.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise APIError(400, f"messages[{i}].role must be system, user or assistant, got {json.dumps(role)}",
                           f"messages[{i}].role", "invalid_value")
        text = message_text(m, i)
        if role in ("system", "developer"):
            sys_lines.append(text.strip())
        else:
            turns.append((role, text))
    if not turns or turns[-1][0] != "user":
        raise APIError(400, "the last non-system message must be from the user", "messages", "invalid_value")
    sys_line = " ".join(s for s in sys_lines if s) or field(body, "system", (str,), cfg["system"]) or None
    tag = tag_of(body, "chat")
    style = style_of(body, cfg)
    user_name, bot_name = field(body, "user_name", (str,)), field(body, "bot_name", (str,))
    n_turns = len(turns)
    if field(body, "trim_history", (bool,), False):
        budget = max(context_len - params["max_tokens"], context_len // 2)
        # first drop, cheaply, the old turns that cannot fit: each turn's text alone (rendered as
        # ' ' + text) already costs this many tokens; trim_chat then re-renders only what is left
        total, keep = 0, 0
        for role, text in reversed(turns):
            total += len(encode(" " + text.strip()))
            if total > budget and keep:
                break
            keep += 1
        while keep < len(turns) and keep > 1 and turns[-keep][0] == "assistant":
            keep -= 1  # as trim_chat does: a trimmed history starts on a user turn
        try:
            turns = textformat.trim_chat(turns[-keep:], budget, sys_line, tag, style, user_name, bot_name)[0]
        except ValueError as e:
            raise APIError(400, str(e), "messages", "context_length_exceeded") from None
    dropped = n_turns - len(turns)
    ids = textformat.encode_prompt(textformat.chat(turns, sys_line, tag, style, user_name, bot_name))
    check_context(len(ids), context_len, "messages")
    reply = dict(stops=textformat.stop_strings(style, user_name, bot_name) + [tokenizer.EOT_TEXT], strip=True)
    return [ids], params, reply, dropped


def parse_completion(body, cfg, context_len):
    """-> (list of prompt ids, sampling settings, reply handling, echo texts)."""
    params = sampling(body, cfg)
    prompt = body.get("prompt")
    if prompt is None:
        raise APIError(400, "'prompt' is required: a string or an array of strings", "prompt",
                       "missing_required_parameter")
    ints = lambda x: isinstance(x, list) and x and all(isinstance(t, int) and not isinstance(t, bool) for t in x)
    if isinstance(prompt, str) or ints(prompt):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) or ints(p) for p in prompt):
        prompts = prompt
    else:
        raise APIError(400, "'prompt' must be a string, an array of strings, or token-id arrays", "prompt",
                       "invalid_type")
    # OpenAI-like caps: every prompt of the array gets n choices, and all of them count against max_n
    if len(prompts) * params["n"] > cfg["max_n"]:
        raise APIError(400, f"'prompt' has {len(prompts)} prompts x n={params['n']} = {len(prompts) * params['n']} "
                            f"choices; this server's limit is {cfg['max_n']} per request", "prompt",
                       "too_many_choices")
    tag = tag_of(body, None)
    style = style_of(body, cfg)
    sys_line = field(body, "system", (str,), cfg["system"]) or None
    echo = field(body, "echo", (bool,), False)
    out, echoes = [], []
    for i, p in enumerate(prompts):
        if isinstance(p, list):
            if tag:
                raise APIError(400, "'tag' needs text prompts, not token ids", "tag", "invalid_value")
            if not all(0 <= t < tokenizer.VOCAB_SIZE for t in p):
                raise APIError(400, f"prompt[{i}]: token ids must be in [0, {tokenizer.VOCAB_SIZE})", "prompt", "invalid_value")
            ids = list(p)
        elif tag:
            ids = textformat.encode_prompt(textformat.prompt_for(tag, p, system=sys_line, style=style))
        else:
            ids = encode(p)
        if not ids:
            raise APIError(400, "the prompt is empty; send some text (or a tag)", "prompt", "invalid_value")
        check_context(len(ids), context_len, "prompt")
        out.append(ids)
        echoes.append(get_tokenizer().decode(ids) if echo else "")
    chatty = tag in CHAT_TASKS  # a chat prompt ends in the bot marker: cut the reply like a chat
    stops = textformat.stop_strings(style) + [tokenizer.EOT_TEXT] if chatty else []
    return out, params, dict(stops=stops, strip=chatty), echoes


# -----------------------------------------------------------------------------
# generation

class Job:
    """One request: its prompts, settings and rows; events go back to the event loop."""

    def __init__(self, prompts, params, reply, loop, scope=None):
        self.prompts, self.params, self.reply, self.loop = prompts, params, reply, loop
        self.scope = scope  # the caller's API key index: cached prompts are only reused within it
        self.events = asyncio.Queue()
        self.cancel = threading.Event()
        self.rows, self.left = [], 0  # its engine rows (one per prompt and choice), rows not finished
        self.held = []  # deltas of a whole (not streamed) answer, handed over with its next other event
        self.t0 = time.perf_counter()

    @property
    def completion_tokens(self):
        return sum(r.n_tokens for r in self.rows)

    def log(self, how):
        seconds = time.perf_counter() - self.t0
        n = self.completion_tokens
        print(f"request {how}: prompt {sum(len(p) for p in self.prompts)} tokens, completion "
              f"{n} tokens in {seconds:.2f}s ({n / max(seconds, 1e-9):.1f} tok/s)", flush=True)

    def emit(self, *event):
        """Hand an event to the event loop (from the worker thread). Each hand-over wakes the loop, which
        takes a core from the model's threads for a moment: a whole answer's deltas wait for its end."""
        if event[0] == "delta" and not self.params["stream"]:
            self.held.append(event)
            return
        events, self.held = self.held + [event], []
        self.loop.call_soon_threadsafe(lambda: [self.events.put_nowait(e) for e in events])


def job_rows(job, device):
    """The engine rows of a request: n per prompt, each with its own generator (engine.sample_rows)."""
    p, n = job.params, job.params["n"]
    stop_ids = () if p["ignore_eos"] else (tokenizer.EOT_ID,)
    return sample_rows(job.prompts, n, p["seed"], device, key=lambda i, j: (job, i * n + j),
                       max_tokens=p["max_tokens"], temperature=p["temperature"], top_k=p["top_k"], top_p=p["top_p"],
                       repetition_penalty=p["repetition_penalty"], stops=job.reply["stops"] + p["stop"],
                       strip=job.reply["strip"], stop_ids=stop_ids, scope=job.scope)


class Worker:
    """The model's thread. Between engine steps it moves queued requests into the engine (while
    their rows fit in the batch) and drops cancelled ones; each step's text goes back to the jobs."""

    def __init__(self, load, max_batch, max_queue, prefill_chunk=256, cache_slots=8):
        """load() -> what load_for_inference returns (model, device, dtype, ...: kept as .loaded), called
        on the worker's own thread before it serves: with
        OpenMP, a thread's parallel ops run ~1.5x slower when another thread ran parallel ops first
        (loading and packing the weights do; docs/benchmarks.md), so every one of them runs here."""
        self.engine_args = dict(max_batch=max_batch, prefill_chunk=prefill_chunk, cache_slots=cache_slots)
        self.max_batch, self.max_queue = max_batch, max_queue
        self.pending = queue.Queue()
        self.jobs = []  # requests in the engine
        self.stats = dict(requests=0, cancelled=0, errors=0)
        self.deadline = None  # set by drain(): when the requests still generating are ended
        loaded, failed = threading.Event(), []

        def start():
            try:
                self.loaded = load()
                self.model, self.device, self.dtype = self.loaded.model, self.loaded.device, self.loaded.dtype
                self.engine = Engine(self.model, **self.engine_args)
                self.engine.warm_up()  # ready only once the weights are read in and the kernels called
            except BaseException as e:  # the caller raises it: bad settings end the script as before
                failed.append(e)
                return
            finally:
                loaded.set()
            self._loop()
        self.thread = threading.Thread(target=start, name="nanophi-worker", daemon=True)
        self.thread.start()
        loaded.wait()
        if failed:
            raise failed[0]

    @property
    def active(self):
        return len(self.jobs)

    def submit(self, job):
        if self.deadline is not None:
            raise APIError(503, "the server is shutting down", None, "server_shutting_down", "server_error")
        if self.pending.qsize() >= self.max_queue:
            raise APIError(503, f"the server is busy ({self.max_queue} requests waiting); retry later",
                           None, "server_busy", "server_error")
        self.stats["requests"] += 1
        self.pending.put(job)

    def drain(self, seconds):
        """Shutting down (from the event loop): queued requests end now, generating ones within seconds."""
        self.deadline = time.monotonic() + seconds
        self.pending.put(None)  # wakes an idle worker

    def _end_drained(self):
        ending = []
        while not self.pending.empty():
            ending.append(self.pending.get_nowait())
        if time.monotonic() >= self.deadline:
            ending += self.jobs
            self.engine.cancel(*[r for j in self.jobs for r in j.rows])
            self.jobs = []
        for job in filter(None, ending):
            job.emit("error", "the server is shutting down", "server_shutting_down")
            job.log("ended (server shutting down)")

    def _start(self, job):
        if job is None:  # drain()'s wake-up
            return
        job.rows = job_rows(job, self.device)
        job.left = len(job.rows)
        for r in job.rows:
            self.engine.add(r)
        self.jobs.append(job)

    def _take_new(self):
        """Queued requests join while their rows fit (one too big for the batch joins an idle engine)."""
        while not self.pending.empty() and self.deadline is None:
            job = self.pending.queue[0]  # only this thread takes from the queue
            if job is None:
                self.pending.get_nowait()
                continue
            rows = len(job.prompts) * job.params["n"]
            busy = len(self.engine.rows) + len(self.engine.waiting)
            if self.jobs and busy + rows > self.max_batch:
                return
            self._start(self.pending.get_nowait())

    def _drop_cancelled(self):
        for job in [j for j in self.jobs if j.cancel.is_set()]:  # client gone: drop its generation
            self.engine.cancel(*job.rows)
            self.jobs.remove(job)
            self.stats["cancelled"] += 1
            job.log("cancelled (client gone)")

    def _dispatch(self, events):
        for row, text, finish in events:
            job, index = row.key
            if text:
                job.emit("delta", index, text)
            if finish:
                job.emit("finish", index, "stop" if finish == "eot" else finish)
                job.left -= 1
                if job.left == 0 and job in self.jobs:
                    job.emit("done", job.completion_tokens)
                    job.log("done")
                    self.jobs.remove(job)

    def _fail_all(self, e):
        """A failed step fails the requests in it, not the server; the engine starts afresh."""
        traceback.print_exc()
        self.stats["errors"] += 1
        for job in self.jobs:
            job.emit("error", f"generation failed: {type(e).__name__}: {e}")
        self.jobs = []
        self.engine = Engine(self.model, **self.engine_args)

    def _loop(self):
        while True:
            if self.deadline is not None:
                self._end_drained()
            if not self.jobs:
                self._start(self.pending.get())  # idle: wait for work
            self._take_new()
            self._drop_cancelled()
            if not self.jobs:
                continue
            try:
                with autocast(self.device, self.dtype):
                    events = self.engine.step()
            except Exception as e:
                self._fail_all(e)
                continue
            self._dispatch(events)


# -----------------------------------------------------------------------------
# the app: handlers at module level; make_app wires them. Each reads the server's state from
# request.app.state: cfg (settings), worker, source (what is served), context_len

async def api_error(request, e):
    return JSONResponse(e.body(), status_code=e.status)


async def validation_error(request, e):
    errs = e.errors()
    where = ".".join(str(x) for x in errs[0].get("loc", ())) if errs else None
    msg = "; ".join(f"{'.'.join(str(x) for x in er.get('loc', ()))}: {er.get('msg')}" for er in errs)
    return JSONResponse(APIError(400, msg or "invalid request", where, "invalid_request").body(), 400)


async def http_error(request, e):
    code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
    msg = f"{request.method} {request.url.path}: {e.detail}"
    return JSONResponse(APIError(e.status_code, msg, None, code).body(), e.status_code)


async def internal_error(request, e):  # never expected: still an OpenAI-shaped answer
    traceback.print_exc()
    return JSONResponse(APIError(500, f"internal error: {type(e).__name__}", None, "internal_error",
                                 "server_error").body(), 500)


def key_index(request):
    """The index of the caller's API key (its cache scope), None when the server has no key, -1 when the
    caller sent none that matches. Every key is compared, in constant time."""
    keys = [k.strip().encode() for k in request.app.state.cfg["api_key"].split(",") if k.strip()]
    if not keys:
        return None
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip().encode() if scheme.lower() == "bearer" else b""
    found = -1
    for i, k in enumerate(keys):
        if hmac.compare_digest(token, k):
            found = i
    return found


async def authorize(request: Request):
    scope = key_index(request)
    if scope == -1:
        raise APIError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'", None,
                       "invalid_api_key")
    request.state.scope = scope


def parse_json(raw):
    """Request body bytes -> a JSON object, or a 400 saying what is wrong."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise APIError(400, f"request body is not valid JSON: {e}", None, "invalid_json") from None
    except RecursionError:  # json's decoder recurses once per level: 100,000 '[' would be a 500
        raise APIError(400, "request body is nested too deeply to be a request", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, f"request body must be a JSON object, got {_kind(body)}", None, "invalid_type")
    return body


async def read_json(request):
    # only JSON: a browser page can send text/plain cross-origin without asking (no CORS preflight)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise APIError(415, f"request body must be sent as Content-Type: application/json, got "
                            f"{ctype or 'none'}", None, "unsupported_media_type")
    limit = request.app.state.cfg["max_request_bytes"]
    size = request.headers.get("content-length", "")
    if size.isdigit() and int(size) > limit:
        raise APIError(413, f"request body is {int(size)} bytes; the limit is {limit}", None, "request_too_large")
    raw = bytearray()

    async def read():
        async for chunk in request.stream():
            raw.extend(chunk)
            if len(raw) > limit:
                raise APIError(413, f"request body is over the limit of {limit} bytes", None, "request_too_large")
    try:  # a body that trickles in holds a connection: bounded like the headers
        await asyncio.wait_for(read(), request.app.state.cfg["timeout_header"])
    except asyncio.TimeoutError:
        raise APIError(408, f"request body not received within {request.app.state.cfg['timeout_header']}s", None,
                       "request_timeout") from None
    return parse_json(bytes(raw))


async def job_events(job, request, poll):
    """The job's events; cancels it when the client goes away."""
    checked = time.monotonic()
    try:
        while True:
            try:
                ev = await asyncio.wait_for(job.events.get(), timeout=0.5)
            except asyncio.TimeoutError:
                ev = None
            if poll and time.monotonic() - checked > 0.5:
                checked = time.monotonic()
                if await request.is_disconnected():
                    return
            if ev is None:
                continue
            yield ev
            if ev[0] in ("done", "error"):
                return
    finally:
        job.cancel.set()  # a no-op when the job has finished; stops it otherwise


def usage(prompts, completion):
    p = sum(len(x) for x in prompts)
    return {"prompt_tokens": p, "completion_tokens": completion, "total_tokens": p + completion}


def sse(obj):
    return f"data: {json.dumps(obj)}\n\n"


def choice(kind, i, text, finish):
    """One streamed choice."""
    if kind == "chat":
        delta = {"content": text} if text else {}
        return {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {"index": i, "text": text, "logprobs": None, "finish_reason": finish}


async def stream_chunks(request, job, kind, base, echoes):
    """Server-sent events: the role (chat) or echoed prompt (completions) first, then the deltas."""
    params, prompts = job.params, job.prompts
    try:
        for i in range(len(prompts) * params["n"]):
            if kind == "chat":
                yield sse({**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                "logprobs": None, "finish_reason": None}]})
            elif echoes and echoes[i // params["n"]]:
                yield sse({**base, "choices": [choice(kind, i, echoes[i // params["n"]], None)]})
        async for ev in job_events(job, request, poll=False):
            if ev[0] == "delta":
                yield sse({**base, "choices": [choice(kind, ev[1], ev[2], None)]})
            elif ev[0] == "finish":
                yield sse({**base, "choices": [choice(kind, ev[1], "", ev[2])]})
            elif ev[0] == "error":
                code = ev[2] if len(ev) > 2 else "generation_failed"
                yield sse(APIError(500, ev[1], None, code, "server_error").body())
            elif ev[0] == "done" and params["include_usage"]:
                yield sse({**base, "choices": [], "usage": usage(prompts, ev[1])})
        yield "data: [DONE]\n\n"
    finally:
        job.cancel.set()


async def whole_response(request, job, kind, base, echoes, headers):
    """The complete answer in one JSON object."""
    n_choices, n = len(job.prompts) * job.params["n"], job.params["n"]
    texts, finish, completion = [""] * n_choices, [None] * n_choices, 0
    async for ev in job_events(job, request, poll=True):
        if ev[0] == "delta":
            texts[ev[1]] += ev[2]
        elif ev[0] == "finish":
            finish[ev[1]] = ev[2]
        elif ev[0] == "error":
            if len(ev) > 2:
                raise APIError(503, ev[1], None, ev[2], "server_error")
            raise APIError(500, ev[1], None, "generation_failed", "server_error")
        elif ev[0] == "done":
            completion = ev[1]
    if job.cancel.is_set() and None in finish:
        return Response(status_code=499)  # the client left; nobody reads this
    if kind == "chat":
        choices = [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None,
                    "finish_reason": f} for i, (t, f) in enumerate(zip(texts, finish))]
    else:
        choices = [{"index": i, "text": (echoes[i // n] if echoes else "") + t, "logprobs": None,
                    "finish_reason": f} for i, (t, f) in enumerate(zip(texts, finish))]
    return JSONResponse({**base, "object": "chat.completion" if kind == "chat" else "text_completion",
                         "system_fingerprint": None, "choices": choices,
                         "usage": usage(job.prompts, completion)}, headers=headers)


async def respond(request, kind, prompts, params, reply, echoes=None, headers=None):
    state = request.app.state
    job = Job(prompts, params, reply, asyncio.get_running_loop(), getattr(request.state, "scope", None))
    state.worker.submit(job)
    rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
    base = {"id": rid, "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
            "created": int(time.time()), "model": state.cfg["model_name"]}
    if params["stream"]:
        return StreamingResponse(stream_chunks(request, job, kind, base, echoes), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", **(headers or {})})
    return await whole_response(request, job, kind, base, echoes, headers)


async def chat_completions(request: Request):
    body = await read_json(request)
    # rendering a long conversation takes a while: off the event loop
    prompts, params, reply, dropped = await asyncio.to_thread(parse_chat, body, request.app.state.cfg,
                                                              request.app.state.context_len)
    headers = {"X-NanoPhi-Dropped-Turns": str(dropped)} if dropped else None
    return await respond(request, "chat", prompts, params, reply, headers=headers)


async def completions(request: Request):
    body = await read_json(request)
    prompts, params, reply, echoes = await asyncio.to_thread(parse_completion, body, request.app.state.cfg,
                                                             request.app.state.context_len)
    return await respond(request, "text", prompts, params, reply, echoes=echoes)


def model_card(cfg):
    return {"id": cfg["model_name"], "object": "model", "created": cfg["created"], "owned_by": "nanophi"}


async def models(request: Request):
    return {"object": "list", "data": [model_card(request.app.state.cfg)]}


async def model_info(name: str, request: Request):
    if name != request.app.state.cfg["model_name"]:
        raise APIError(404, f"The model '{name}' does not exist", "model", "model_not_found")
    return model_card(request.app.state.cfg)


async def health(request: Request):
    state = request.app.state
    if key_index(request) == -1:  # the counters tell what others' prompts shared: only for a key holder
        return {"status": "ok", "auth_required": True}
    cfg, worker, engine = state.cfg, state.worker, state.worker.engine
    return {"status": "ok", "model": cfg["model_name"], "source": None if cfg["api_key"] else state.source,
            "device": worker.device, "dtype": worker.dtype, "context_length": state.context_len,
            "auth_required": bool(cfg["api_key"]), "queued": worker.pending.qsize(), "active": worker.active,
            "batch": len(engine.rows), **worker.stats, "generated_tokens": engine.tokens, "steps": engine.steps,
            "reused_prompt_tokens": engine.reused,
            "defaults": {k: cfg[k] for k in ("temperature", "top_k", "top_p", "repetition_penalty",
                                             "max_tokens", "max_tokens_cap", "chat_style", "system")},
            "tags": [t.strip("[]") for t in textformat.TAGS.values()]}


def asset(path):
    """A route serving one file of the page (from the fixed table _ASSETS)."""
    name, media = _ASSETS[path]

    async def serve_asset():
        with open(os.path.join(_STATIC_DIR, name), "rb") as f:
            return Response(f.read(), media_type=media, headers={"Cache-Control": "no-cache"})
    return serve_asset


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def served_hosts(cfg):
    """The Host names answered: loopback, --host unless it is a wildcard, and allowed_hosts ("*": any)."""
    names = set(LOOPBACK_NAMES) | {h.strip().lower() for h in cfg["allowed_hosts"].split(",") if h.strip()}
    if cfg["host"] not in ("0.0.0.0", "::", ""):
        names.add(cfg["host"].lower())
    return names


def host_name(netloc):
    """'example.com:8000' -> 'example.com', '[::1]:8000' -> '::1'."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        return netloc[1:].partition("]")[0]
    return netloc.rpartition(":")[0] if netloc.count(":") == 1 else netloc


class GuardMiddleware:
    """Before any route: a Host header must name this server (a DNS-rebinding page names its own domain),
    and with no API key a browser request from another origin (Origin set and not this server's, nor one
    of cors_origins) is refused: without a key, the browser's origin check is the only lock."""

    def __init__(self, app, cfg):
        self.app, self.cfg = app, cfg
        self.hosts = served_hosts(cfg)
        self.origins = {o.strip() for o in cfg["cors_origins"].split(",") if o.strip()}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if "*" not in self.hosts and host_name(host) not in self.hosts:
            err = APIError(421, f"Host {host!r} is not served here; start the server with "
                                f"--allowed_hosts={host_name(host) or '<name>'} to allow it", None, "invalid_host")
            return await JSONResponse(err.body(), err.status)(scope, receive, send)
        origin = headers.get("origin")
        if origin and not self.cfg["api_key"] and scope["method"] not in ("GET", "HEAD", "OPTIONS") \
                and origin.partition("://")[2].lower() != host.lower() and origin not in self.origins \
                and "*" not in self.origins:
            err = APIError(403, f"cross-origin request from {origin} refused: this server has no api_key; add the "
                                "origin to --cors_origins or set an api_key", None, "cross_origin_refused")
            return await JSONResponse(err.body(), err.status)(scope, receive, send)
        return await self.app(scope, receive, send)


def make_app(worker, cfg, source):
    from fastapi import APIRouter, Depends, FastAPI
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    app = FastAPI(title="NanoPhi", docs_url=None, redoc_url=None, openapi_url=None)  # docs need a CDN
    app.state.cfg, app.state.worker, app.state.source = cfg, worker, source
    app.state.context_len = worker.model.config.block_size
    if cfg["cors_origins"]:
        from fastapi.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=[o.strip() for o in cfg["cors_origins"].split(",")],
                           allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"],
                           expose_headers=["X-NanoPhi-Dropped-Turns"])
    app.add_middleware(GuardMiddleware, cfg=cfg)  # added last: runs first, before CORS
    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])
    v1.add_api_route("/chat/completions", chat_completions, methods=["POST"])
    v1.add_api_route("/completions", completions, methods=["POST"])
    v1.add_api_route("/models", models, methods=["GET"])
    v1.add_api_route("/models/{name}", model_info, methods=["GET"])
    app.include_router(v1)
    app.add_api_route("/health", health, methods=["GET"])
    for path in _ASSETS:
        app.add_api_route(path, asset(path), methods=["GET"])
    return app


def main(argv=None):
    cfg = configure(globals(), argv)
    if cfg["max_tokens"] > cfg["max_tokens_cap"]:
        raise ConfigError(f"max_tokens={cfg['max_tokens']} is over max_tokens_cap={cfg['max_tokens_cap']}")
    cfg["api_key"] = cfg["api_key"] or os.environ.get("NANOPHI_API_KEY", "")
    cfg["created"] = int(time.time())
    # the model is loaded on the worker's thread (Worker's docstring says why)
    worker = Worker(lambda: load_for_inference(cfg["init_from"], cfg["out_dir"], cfg["device"], cfg["dtype"],
                                               cfg["weights"], cfg["which"], cfg["block_size"], batch=cfg["max_batch"]),
                    cfg["max_batch"], cfg["max_queue"], cfg["prefill_chunk"], cfg["cache_slots"])
    run = worker.loaded
    model, dev, ptdtype, weight_format, source = run.model, run.device, run.dtype, run.weights, run.source
    print(f"serving {source} as '{cfg['model_name']}' on {dev} ({ptdtype}, {weight_format} weights), context "
          f"{model.config.block_size}, {run.n_params / 1e6:.1f}M parameters")
    if weight_format in ("int8", "bf16") and cfg["max_batch"] > 1:
        print(f"note: with {weight_format} weights a row's numbers depend on the rows sharing its step, so a seeded "
              "request's text can change with the load (fp32 keeps it)")
    if cfg["host"] not in ("127.0.0.1", "localhost", "::1") and not cfg["api_key"]:
        print(f"WARNING: listening on {cfg['host']} without an api_key: anyone who can reach it can use it")
    app = make_app(worker, cfg, source)
    print(f"open http://{cfg['host']}:{cfg['port']}/  (API at http://{cfg['host']}:{cfg['port']}/v1)", flush=True)
    run_server(app, worker, cfg)


def run_server(app, worker, cfg):
    """uvicorn with bounds on slow and idle connections and a connection cap; SIGTERM drains (Worker.drain)."""
    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        """h11 with a deadline for a request's headers (uvicorn has none): a client that sends half a
        request is closed after timeout_header seconds instead of holding its socket forever."""

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm()

        def _arm(self):
            self.waiting_for = self.cycle  # the request being waited for is the one after this cycle
            self.header_timer = self.loop.call_later(cfg["timeout_header"], self._expire)

        def _expire(self):
            if self.cycle is self.waiting_for and not self.transport.is_closing():
                self.transport.close()

        def on_response_complete(self):
            self.header_timer.cancel()
            self._arm()
            super().on_response_complete()

        def connection_lost(self, exc):
            self.header_timer.cancel()
            super().connection_lost(exc)

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None):
            worker.drain(cfg["drain_timeout"])
            await super().shutdown(sockets)

    config = uvicorn.Config(app, host=cfg["host"], port=cfg["port"], access_log=cfg["access_log"], log_level="info",
                            http=Protocol, timeout_keep_alive=cfg["timeout_keep_alive"],
                            limit_concurrency=cfg["limit_concurrency"],
                            timeout_graceful_shutdown=cfg["drain_timeout"] + 5)  # time for the error events
    Server(config).run()


if __name__ == "__main__":
    run_main(main, sys.argv[1:], errors=((ValueError, 2), (FileNotFoundError, 2)))
