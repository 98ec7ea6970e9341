"""
Calls to any OpenAI-compatible endpoint (serve.py, vLLM, Ollama, OpenAI) for the data loop: the
quality judge and the synthetic-data generator both send many independent chat requests and keep
every reply in an append-only JSONL file keyed by a hash of the request, so a run killed at any
moment (kill -9 included) resumes where it stopped: done keys are skipped, nothing is asked twice,
nothing completed is lost.

    requests: [{"key", "messages", ...extra fields copied into the record}]
    record:   {"key", ...extra, "text", "finish_reason", "usage": {prompt_tokens, completion_tokens}, "model"}

Retries with exponential backoff on 408/409/429/5xx and dropped connections are the openai
client's own (max_retries); a wrong key or an endpoint still down after the retries stops the run
with a clear message, and the file holds everything finished before it. Each attempt has a total
deadline (timeout: connecting, sending and the whole reply, however slowly it trickles) and a reply
may be at most MAX_REPLY_BYTES; both are enforced under the client, in its httpx transport.

The key: $OPENAI_API_KEY goes only to the OpenAI API itself (https://api.openai.com); any other
base_url gets a key only when the user names its variable (api_key_env=NAME), as the openai and HF
clients never send one key to a host it was not made for.
"""
import asyncio
import hashlib
import json
import os
import sys
import time


class EndpointError(RuntimeError):
    """The endpoint cannot be used (down, wrong key, unknown model): stop, the output file is resumable."""


def request_key(model, messages, **params):
    """The hash that names one request: same model, messages and sampling settings -> same key."""
    blob = json.dumps({"model": model, "messages": messages, **params}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


def load_done(path):
    """{key: record} of a results file. A torn last line (the process died mid-write) is cut off, so the
    file stays valid JSONL; any other bad line is an error naming file:line (never silently dropped)."""
    done = {}
    if not os.path.exists(path):
        return done
    with open(path, "rb") as f:
        data = f.read()
    good_end = 0
    for lineno, line in enumerate(data.splitlines(keepends=True), 1):
        last = good_end + len(line) == len(data)
        try:
            rec = json.loads(line)
            if not line.endswith(b"\n"):
                raise ValueError("no newline")
        except ValueError:
            if last:  # the write that was interrupted: drop it, its request runs again
                print(f"{path}:{lineno}: incomplete last record (interrupted write) removed; it will be redone",
                      file=sys.stderr)
                with open(path, "r+b") as f:
                    f.truncate(good_end)
                break
            raise EndpointError(f"{path}:{lineno}: not a JSON record; the results file is damaged") from None
        done[rec["key"]] = rec
        good_end += len(line)
    return done


def append_record(f, rec):
    """One record, one write, flushed and fsynced: after this returns the record survives a kill -9."""
    f.write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))
    f.flush()
    os.fsync(f.fileno())


OPENAI_HOST = "api.openai.com"
MAX_REPLY_BYTES = 8 * 2**20  # a chat reply of max_tokens is kilobytes; more is a broken or hostile endpoint


def api_key_for(base_url, key_env=""):
    """(key, the variable it came from) for base_url. key_env="" : $OPENAI_API_KEY, and only when
    base_url is https://api.openai.com; key_env=NAME: $NAME for whatever base_url (the user chose it)."""
    from urllib.parse import urlsplit
    if key_env:
        if not os.environ.get(key_env):
            raise EndpointError(f"api_key_env={key_env}: ${key_env} is not set (or empty)")
        return os.environ[key_env], key_env
    url = urlsplit(base_url)
    if url.scheme == "https" and url.hostname == OPENAI_HOST:
        return os.environ.get("OPENAI_API_KEY", ""), "OPENAI_API_KEY"
    if os.environ.get("OPENAI_API_KEY"):
        print(f"note: $OPENAI_API_KEY is not sent to {base_url} (only to https://{OPENAI_HOST}); "
              f"set api_key_env=OPENAI_API_KEY to send it there", file=sys.stderr)
    return "", "api_key_env"


class ReplyTooLarge(Exception):
    pass


def _bounded_transport(timeout, max_bytes):
    """An httpx transport whose every request ends within `timeout` seconds in all (httpx's own timeouts
    are per read: a byte a second never trips them) and whose reply body stops at max_bytes."""
    import httpx

    class Stream(httpx.AsyncByteStream):
        def __init__(self, inner, deadline, request):
            self.inner, self.deadline, self.request = inner, deadline, request

        async def __aiter__(self):
            chunks, size = self.inner.__aiter__(), 0
            while True:
                try:
                    chunk = await asyncio.wait_for(chunks.__anext__(), self.deadline - time.monotonic())
                except StopAsyncIteration:
                    return
                except asyncio.TimeoutError:
                    raise httpx.ReadTimeout(f"reply not complete after {timeout:g} s", request=self.request) from None
                size += len(chunk)
                if size > max_bytes:
                    raise ReplyTooLarge(f"a reply larger than {max_bytes // 2**20} MiB")
                yield chunk

        async def aclose(self):
            await self.inner.aclose()

    class Transport(httpx.AsyncHTTPTransport):
        async def handle_async_request(self, request):
            deadline = time.monotonic() + timeout
            try:
                response = await asyncio.wait_for(super().handle_async_request(request), timeout)
            except asyncio.TimeoutError:
                raise httpx.ReadTimeout(f"no reply headers after {timeout:g} s", request=request) from None
            return httpx.Response(response.status_code, headers=response.headers, extensions=response.extensions,
                                  stream=Stream(response.stream, deadline, request))
    return Transport()


def make_client(base_url, api_key, timeout, max_retries):
    import httpx
    import openai
    http = httpx.AsyncClient(transport=_bounded_transport(timeout, MAX_REPLY_BYTES), timeout=timeout,
                             trust_env=False)  # our transport: no proxy or .netrc from the environment
    return openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "none", timeout=timeout, max_retries=max_retries,
                              http_client=http)


def _not_a_completion(r):
    """Why a 200 reply is no chat completion (an HTML page, {}, choices: []), or None."""
    choices = getattr(r, "choices", None)
    if not isinstance(choices, list):
        return f"a {type(r).__name__} reply without 'choices'" if not isinstance(r, str) else \
            f"not JSON ({r[:40].strip()!r}...)"
    if not choices:
        return "'choices' is empty"
    message = getattr(choices[0], "message", None)
    if message is None or not isinstance(getattr(message, "content", None), (str, type(None))):
        return "choices[0] has no message"
    return None


async def _one(client, sem, req, cfg, stats):
    import openai
    async with sem:
        t0 = time.time()
        try:
            r = await client.chat.completions.create(model=cfg["model"], messages=req["messages"],
                                                     max_tokens=cfg["max_tokens"], temperature=cfg["temperature"])
        except openai.AuthenticationError as e:
            raise EndpointError(f"{cfg['base_url']}: the API key was refused ({e.status_code}); set the key's "
                                f"environment variable ({cfg['key_env']})") from None
        except openai.PermissionDeniedError as e:
            raise EndpointError(f"{cfg['base_url']}: permission denied ({e.status_code})") from None
        except openai.NotFoundError:
            raise EndpointError(f"{cfg['base_url']}: model {cfg['model']!r} or the /chat/completions route "
                                f"was not found; check --base_url (it usually ends in /v1) and --model") from None
        except openai.APITimeoutError:
            raise EndpointError(f"{cfg['base_url']}: no complete reply within {cfg['timeout']:g} s (--timeout), "
                                f"{cfg['max_retries']} retries included") from None
        except ReplyTooLarge as e:
            raise EndpointError(f"{cfg['base_url']}: {e}; is it a chat endpoint?") from None
        except openai.APIConnectionError as e:
            if isinstance(e.__cause__, ReplyTooLarge):
                raise EndpointError(f"{cfg['base_url']}: {e.__cause__}; is it a chat endpoint?") from None
            raise EndpointError(f"{cfg['base_url']}: cannot reach the endpoint after {cfg['max_retries']} retries "
                                f"({type(e).__name__}); is it running?") from None
        except openai.RateLimitError:
            raise EndpointError(f"{cfg['base_url']}: still rate limited (429) after {cfg['max_retries']} "
                                f"retries; lower --concurrency or try later") from None
        except openai.InternalServerError as e:
            raise EndpointError(f"{cfg['base_url']}: server error {e.status_code} after {cfg['max_retries']} "
                                f"retries") from None
        except openai.BadRequestError as e:  # this request only (too long for the model, ...): count, go on
            stats["failed"] += 1
            if len(stats["errors"]) < 5:
                stats["errors"].append(f"{req['key']}: {e.message}")
            return None
        stats["seconds"] += time.time() - t0
    why = _not_a_completion(r)
    if why:
        raise EndpointError(f"{cfg['base_url']}: a 200 reply that is not a chat completion ({why}); "
                            f"check --base_url (an OpenAI-compatible endpoint, usually ending in /v1)")
    choice = r.choices[0]
    usage = r.usage
    return {**{k: v for k, v in req.items() if k != "messages"},
            "text": choice.message.content or "", "finish_reason": choice.finish_reason,
            "usage": {"prompt_tokens": usage.prompt_tokens if usage else 0,
                      "completion_tokens": usage.completion_tokens if usage else 0},
            "model": r.model}


async def _run(requests, path, cfg, progress):
    from tqdm import tqdm
    client = make_client(cfg["base_url"], cfg["api_key"], cfg["timeout"], cfg["max_retries"])
    sem = asyncio.Semaphore(cfg["concurrency"])
    stats = {"failed": 0, "errors": [], "seconds": 0.0, "written": 0, "completion_tokens": 0, "wall": 0.0}
    t0 = time.time()
    bar = tqdm(total=len(requests), desc="requests", unit=" req", disable=not progress, file=sys.stderr,
               mininterval=1.0, dynamic_ncols=True)
    with open(path, "ab") as f:
        # a bounded window of tasks in flight, so a million requests never sit in memory as tasks
        pending, todo = set(), iter(requests)
        try:
            while True:
                while len(pending) < cfg["concurrency"] * 2:
                    req = next(todo, None)
                    if req is None:
                        break
                    pending.add(asyncio.ensure_future(_one(client, sem, req, cfg, stats)))
                if not pending:
                    break
                finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                error = None
                for t in finished:  # keep every finished reply before stopping on an error
                    if t.exception() is not None:
                        error = error or t.exception()
                        continue
                    bar.update(1)
                    if t.result() is not None:
                        append_record(f, t.result())
                        stats["written"] += 1
                        stats["completion_tokens"] += t.result()["usage"]["completion_tokens"]
                if error is not None:
                    raise error  # the finally below cancels the requests still in flight
        finally:
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            bar.close()
            await client.close()
            stats["wall"] = time.time() - t0
    return stats


def run_requests(requests, path, base_url, model, api_key="", key_env="", concurrency=4, timeout=60.0,
                 max_retries=3, max_tokens=512, temperature=0.7, progress=True):
    """Send the requests not yet in `path`, appending each finished reply. Returns (all records by key, stats)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    done = load_done(path)
    todo = [r for r in requests if r["key"] not in done]
    cfg = dict(base_url=base_url, model=model, api_key=api_key, key_env=key_env, concurrency=concurrency,
               timeout=timeout, max_retries=max_retries, max_tokens=max_tokens, temperature=temperature)
    stats = {"failed": 0, "errors": [], "seconds": 0.0, "written": 0, "completion_tokens": 0, "wall": 0.0}
    if todo:
        stats = asyncio.run(_run(todo, path, cfg, progress))
    stats.update(already_done=len(done), asked=len(todo))
    return load_done(path), stats


def usage_totals(records, price_in=0.0, price_out=0.0):
    """Token usage over records and its cost at prices per million prompt / completion tokens."""
    p = sum(r["usage"]["prompt_tokens"] for r in records)
    c = sum(r["usage"]["completion_tokens"] for r in records)
    return {"requests": len(records), "prompt_tokens": p, "completion_tokens": c,
            "cost": round(p * price_in / 1e6 + c * price_out / 1e6, 6)}
