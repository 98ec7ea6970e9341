"""
Serve a trained model: an OpenAI-compatible API and a small web chat page.

    python serve.py                                   # out/best.pt on http://127.0.0.1:8000
    python serve.py --init_from=out/ckpt.pt --port=8080 --api_key=secret
    python serve.py --init_from=gpt2 --model_name=gpt2 --temperature=0.7

Routes: POST /v1/chat/completions, POST /v1/completions (stream: true = server-sent events
ending in "data: [DONE]"), GET /v1/models, GET /health, GET / (the page) and its own assets.

The model runs in one worker thread that interleaves up to max_active requests one forward pass
at a time. Flags, request fields and scheduling: docs/serving.md.
"""
import asyncio
import hmac
import json
import math
import os
import queue
import random
import sys
import threading
import time
import traceback
import uuid

import torch

from nanophi import textformat
from nanophi.textformat import TextStream
from nanophi.checkpoint import default_out_dir, load_model
from nanophi.device import autocast, pick_device, pick_dtype
from nanophi.tasks import CHAT_TASKS
from nanophi.weights import apply_weights, resolve_weights
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
api_key = ""  # or the NANOPHI_API_KEY environment variable; empty: no auth
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
max_active = 4  # requests generating at once (interleaved); more wait in the queue
max_queue = 256  # waiting requests beyond this get a 503
cors_origins = ""  # other web apps allowed to call the API from a browser: "https://a.example,https://b.example" or "*"
access_log = True
# -----------------------------------------------------------------------------

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
    """One request: its prompts, settings and generator; events go back to the event loop."""

    def __init__(self, prompts, params, reply, loop):
        self.prompts, self.params, self.reply, self.loop = prompts, params, reply, loop
        self.events = asyncio.Queue()
        self.cancel = threading.Event()
        self.completion_tokens = 0
        self.t0 = time.perf_counter()

    def log(self, how):
        seconds = time.perf_counter() - self.t0
        print(f"request {how}: prompt {sum(len(p) for p in self.prompts)} tokens, completion "
              f"{self.completion_tokens} tokens in {seconds:.2f}s ({self.completion_tokens / max(seconds, 1e-9):.1f} tok/s)",
              flush=True)

    def emit(self, *event):
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class Engine:
    """The model in one worker thread; requests interleave there one forward pass at a time."""

    def __init__(self, model, device, dtype, max_active, max_queue):
        self.model, self.device, self.dtype = model, device, dtype
        self.max_active, self.max_queue = max_active, max_queue
        self.pending = queue.Queue()
        self.active = 0
        self.stats = dict(requests=0, cancelled=0, errors=0, generated_tokens=0)
        self.thread = threading.Thread(target=self._loop, name="nanophi-engine", daemon=True)
        self.thread.start()

    def submit(self, job):
        if self.pending.qsize() >= self.max_queue:
            raise APIError(503, f"the server is busy ({self.max_queue} requests waiting); retry later",
                           None, "server_busy", "server_error")
        self.stats["requests"] += 1
        self.pending.put(job)

    def _run(self, job):
        """A generator doing one model step per next(): the worker interleaves these."""
        p = job.params
        seed = p["seed"] if p["seed"] is not None else random.getrandbits(63)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        n = p["n"]
        for pi, ids in enumerate(job.prompts):
            stops = job.reply["stops"] + p["stop"]
            streams = [TextStream(stops, job.reply["strip"], p["ignore_eos"]) for _ in range(n)]
            x = torch.tensor([ids] * n, dtype=torch.long, device=self.device)
            steps = self.model.generate_stream(
                x, p["max_tokens"], temperature=p["temperature"], top_k=p["top_k"] or None, top_p=p["top_p"],
                repetition_penalty=p["repetition_penalty"], stop_ids=None if p["ignore_eos"] else [tokenizer.EOT_ID],
                generator=gen)
            try:
                for nxt, _ in steps:
                    for j, s in enumerate(streams):
                        if s.finish:
                            continue
                        delta = s.add(int(nxt[j]))
                        job.completion_tokens += 1
                        self.stats["generated_tokens"] += 1
                        if delta:
                            job.emit("delta", pi * n + j, delta)
                        if s.finish:
                            job.emit("finish", pi * n + j, s.finish)
                    if all(s.finish for s in streams):
                        break
                    yield
            finally:
                steps.close()
            for j, s in enumerate(streams):
                if not s.finish:
                    delta = s.close()
                    if delta:
                        job.emit("delta", pi * n + j, delta)
                    job.emit("finish", pi * n + j, s.finish)
            yield
        job.emit("done", job.completion_tokens)

    def _loop(self):
        active = []  # [job, runner]
        while True:
            while len(active) < self.max_active:
                try:
                    job = self.pending.get(block=not active)
                except queue.Empty:
                    break
                active.append((job, self._run(job)))
            self.active = len(active)
            for item in list(active):
                job, runner = item
                try:
                    if job.cancel.is_set():  # client gone: drop its generation
                        runner.close()
                        self.stats["cancelled"] += 1
                        job.log("cancelled (client gone)")
                        active.remove(item)
                        continue
                    with autocast(self.device, self.dtype):
                        next(runner)
                except StopIteration:
                    job.log("done")
                    active.remove(item)
                except Exception as e:  # a failed request must not take the server down
                    traceback.print_exc()
                    self.stats["errors"] += 1
                    job.emit("error", f"generation failed: {type(e).__name__}: {e}")
                    active.remove(item)
            self.active = len(active)


# -----------------------------------------------------------------------------
# the app

def make_app(engine, cfg, source):
    from fastapi import APIRouter, Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException

    app = FastAPI(title="NanoPhi", docs_url=None, redoc_url=None, openapi_url=None)  # docs need a CDN
    context_len = engine.model.config.block_size
    if cfg["cors_origins"]:
        from fastapi.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=[o.strip() for o in cfg["cors_origins"].split(",")],
                           allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"],
                           expose_headers=["X-NanoPhi-Dropped-Turns"])
    key = cfg["api_key"].encode()

    @app.exception_handler(APIError)
    async def api_error(request, e):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, e):
        errs = e.errors()
        where = ".".join(str(x) for x in errs[0].get("loc", ())) if errs else None
        msg = "; ".join(f"{'.'.join(str(x) for x in er.get('loc', ()))}: {er.get('msg')}" for er in errs)
        return JSONResponse(APIError(400, msg or "invalid request", where, "invalid_request").body(), 400)

    @app.exception_handler(HTTPException)
    async def http_error(request, e):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        msg = f"{request.method} {request.url.path}: {e.detail}"
        return JSONResponse(APIError(e.status_code, msg, None, code).body(), e.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request, e):  # never expected: still an OpenAI-shaped answer
        traceback.print_exc()
        return JSONResponse(APIError(500, f"internal error: {type(e).__name__}", None, "internal_error",
                                     "server_error").body(), 500)

    async def authorize(request: Request):
        if not key:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key):
            raise APIError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'", None,
                           "invalid_api_key")

    async def read_json(request):
        limit = cfg["max_request_bytes"]
        size = request.headers.get("content-length", "")
        if size.isdigit() and int(size) > limit:
            raise APIError(413, f"request body is {int(size)} bytes; the limit is {limit}", None, "request_too_large")
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                raise APIError(413, f"request body is over the limit of {limit} bytes", None, "request_too_large")
        try:
            body = json.loads(bytes(raw))
        except (ValueError, UnicodeDecodeError) as e:
            raise APIError(400, f"request body is not valid JSON: {e}", None, "invalid_json") from None
        if not isinstance(body, dict):
            raise APIError(400, f"request body must be a JSON object, got {_kind(body)}", None, "invalid_type")
        return body

    def start(prompts, params, reply):
        job = Job(prompts, params, reply, asyncio.get_running_loop())
        engine.submit(job)
        return job

    async def events(job, request, poll):
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

    async def respond(request, kind, prompts, params, reply, echoes=None, headers=None):
        job = start(prompts, params, reply)
        rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        created, n_choices = int(time.time()), len(prompts) * params["n"]
        base = {"id": rid, "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
                "created": created, "model": cfg["model_name"]}

        def choice(i, text, finish):
            if kind == "chat":
                delta = {"content": text} if text else {}
                return {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {"index": i, "text": text, "logprobs": None, "finish_reason": finish}

        if params["stream"]:
            async def stream():
                try:
                    for i in range(n_choices):  # the role (chat) or the echoed prompt (completions) first
                        if kind == "chat":
                            yield sse({**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                            "logprobs": None, "finish_reason": None}]})
                        elif echoes and echoes[i // params["n"]]:
                            yield sse({**base, "choices": [choice(i, echoes[i // params["n"]], None)]})
                    async for ev in events(job, request, poll=False):
                        if ev[0] == "delta":
                            yield sse({**base, "choices": [choice(ev[1], ev[2], None)]})
                        elif ev[0] == "finish":
                            yield sse({**base, "choices": [choice(ev[1], "", ev[2])]})
                        elif ev[0] == "error":
                            yield sse(APIError(500, ev[1], None, "generation_failed", "server_error").body())
                        elif ev[0] == "done" and params["include_usage"]:
                            yield sse({**base, "choices": [], "usage": usage(prompts, ev[1])})
                    yield "data: [DONE]\n\n"
                finally:
                    job.cancel.set()

            return StreamingResponse(stream(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", **(headers or {})})

        texts, finish = [""] * n_choices, [None] * n_choices
        completion = 0
        async for ev in events(job, request, poll=True):
            if ev[0] == "delta":
                texts[ev[1]] += ev[2]
            elif ev[0] == "finish":
                finish[ev[1]] = ev[2]
            elif ev[0] == "error":
                raise APIError(500, ev[1], None, "generation_failed", "server_error")
            elif ev[0] == "done":
                completion = ev[1]
        if job.cancel.is_set() and None in finish:
            return Response(status_code=499)  # the client left; nobody reads this
        if kind == "chat":
            choices = [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None,
                        "finish_reason": f} for i, (t, f) in enumerate(zip(texts, finish))]
            obj = "chat.completion"
        else:
            choices = [{"index": i, "text": (echoes[i // params["n"]] if echoes else "") + t, "logprobs": None,
                        "finish_reason": f} for i, (t, f) in enumerate(zip(texts, finish))]
            obj = "text_completion"
        return JSONResponse({"id": rid, "object": obj, "created": created, "model": cfg["model_name"],
                             "system_fingerprint": None, "choices": choices,
                             "usage": usage(prompts, completion)}, headers=headers)

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])

    @v1.post("/chat/completions")
    async def chat_completions(request: Request):
        body = await read_json(request)
        # rendering a long conversation takes a while: off the event loop
        prompts, params, reply, dropped = await asyncio.to_thread(parse_chat, body, cfg, context_len)
        headers = {"X-NanoPhi-Dropped-Turns": str(dropped)} if dropped else None
        return await respond(request, "chat", prompts, params, reply, headers=headers)

    @v1.post("/completions")
    async def completions(request: Request):
        body = await read_json(request)
        prompts, params, reply, echoes = await asyncio.to_thread(parse_completion, body, cfg, context_len)
        return await respond(request, "text", prompts, params, reply, echoes=echoes)

    @v1.get("/models")
    async def models():
        return {"object": "list", "data": [{"id": cfg["model_name"], "object": "model", "created": cfg["created"],
                                            "owned_by": "nanophi"}]}

    @v1.get("/models/{name}")
    async def model_info(name: str):
        if name != cfg["model_name"]:
            raise APIError(404, f"The model '{name}' does not exist", "model", "model_not_found")
        return {"id": name, "object": "model", "created": cfg["created"], "owned_by": "nanophi"}

    app.include_router(v1)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": cfg["model_name"], "source": None if key else source, "device": engine.device,
                "dtype": engine.dtype, "context_length": context_len, "auth_required": bool(key),
                "queued": engine.pending.qsize(), "active": engine.active, **engine.stats,
                "defaults": {k: cfg[k] for k in ("temperature", "top_k", "top_p", "repetition_penalty",
                                                 "max_tokens", "max_tokens_cap", "chat_style", "system")},
                "tags": [t.strip("[]") for t in textformat.TAGS.values()]}

    def asset(path):
        name, media = _ASSETS[path]

        async def serve_asset():
            with open(os.path.join(_STATIC_DIR, name), "rb") as f:
                return Response(f.read(), media_type=media, headers={"Cache-Control": "no-cache"})
        return serve_asset

    for path in _ASSETS:
        app.add_api_route(path, asset(path), methods=["GET"])
    return app


def main():
    from configurator import configure
    try:  # bad settings or a missing checkpoint: one clear line, no traceback
        cfg = configure(globals())
        cfg["api_key"] = cfg["api_key"] or os.environ.get("NANOPHI_API_KEY", "")
        cfg["created"] = int(time.time())
        dev = pick_device(cfg["device"])
        ptdtype = pick_dtype(cfg["dtype"], dev)
        weight_format = resolve_weights(cfg["weights"], dev, ptdtype)
        if cfg["max_tokens"] > cfg["max_tokens_cap"]:
            raise ValueError(f"max_tokens={cfg['max_tokens']} is over max_tokens_cap={cfg['max_tokens_cap']}")
        if cfg["chat_style"] not in textformat.CHAT_STYLES:
            raise ValueError(f"chat_style={cfg['chat_style']!r}: known styles are {', '.join(textformat.CHAT_STYLES)}")
        model, source = load_model(cfg["init_from"], cfg["out_dir"], dev, cfg["which"], cfg["block_size"])
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        sys.exit(f"serve.py: {e}")
    print(f"serving {source} as '{cfg['model_name']}' on {dev} ({ptdtype}, {weight_format} weights), context "
          f"{model.config.block_size}, {model.get_num_params() / 1e6:.1f}M parameters")
    model = apply_weights(model, weight_format)
    if cfg["host"] not in ("127.0.0.1", "localhost", "::1") and not cfg["api_key"]:
        print(f"WARNING: listening on {cfg['host']} without an api_key: anyone who can reach it can use it")
    engine = Engine(model, dev, ptdtype, cfg["max_active"], cfg["max_queue"])
    app = make_app(engine, cfg, source)
    import uvicorn
    print(f"open http://{cfg['host']}:{cfg['port']}/  (API at http://{cfg['host']}:{cfg['port']}/v1)", flush=True)
    uvicorn.run(app, host=cfg["host"], port=cfg["port"], access_log=cfg["access_log"], log_level="info",
                timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
