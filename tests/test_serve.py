"""
serve.py driven as a real server process on loopback, with httpx and the official openai client.
Two servers per module: one open (a tiny NanoPhi checkpoint), one with an API key (a tiny
transformers directory). Expected outputs come from the same checkpoint loaded in this process.
"""
import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import httpx
import openai
import pytest
import torch

from nanophi import textformat
from nanophi.checkpoint import load_model
from nanophi.tokenizer import EOT_ID, decode, get_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "sekret-key-123"
KEY2 = "other-user-key-456"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """python serve.py ... as a subprocess; .url, .log, .stop()."""

    def __init__(self, args, log_path, env=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "serve.py", f"--port={self.port}", "--access_log=False", *args],
                                     cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})

    def wait(self, timeout=90):
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve.py exited ({self.proc.returncode}):\n{open(self.log_path).read()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"serve.py did not come up in {timeout}s:\n{open(self.log_path).read()}")

    def health(self):
        return httpx.get(self.url + "/health", timeout=5).json()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def servers(tiny_out_dir, tiny_hf_dir, tmp_path_factory):
    logs = tmp_path_factory.mktemp("serve_logs")
    a = Server([f"--out_dir={tiny_out_dir}", "--max_tokens_cap=20000", "--max_request_bytes=100000",
                "--max_batch=2", "--cors_origins=http://app.example", "--timeout_header=2"], str(logs / "open.log"))
    b = Server([f"--init_from={tiny_hf_dir}", "--model_name=tiny-hf"], str(logs / "auth.log"),
               env={"NANOPHI_API_KEY": f"{KEY},{KEY2}"})
    try:
        yield a.wait(), b.wait()
    finally:
        a.stop()
        b.stop()


@pytest.fixture(scope="module")
def srv(servers):
    return servers[0]


@pytest.fixture(scope="module")
def auth_srv(servers):
    return servers[1]


@pytest.fixture(scope="module")
def local_model(tiny_out_dir):
    return load_model("resume", tiny_out_dir, "cpu")[0]


def post(srv, path, body, **kw):
    return httpx.post(srv.url + path, json=body, timeout=60, **kw)


def stream_events(srv, path, body, headers=None):
    """POST with stream: true; the parsed data events, checking the SSE framing and [DONE]."""
    events = []
    with httpx.stream("POST", srv.url + path, json={**body, "stream": True}, headers=headers, timeout=60) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    blocks = raw.split("\n\n")
    assert blocks[-1] == "" and blocks[-2] == "data: [DONE]", raw[-200:]
    for b in blocks[:-2]:
        assert b.startswith("data: "), b
        events.append(json.loads(b[6:]))
    return events


def joined(events, n=1, chat=True):
    """Texts and finish reasons per choice index from stream events."""
    texts, finish = [""] * n, [None] * n
    for ev in events:
        for c in ev["choices"]:
            texts[c["index"]] += (c["delta"].get("content") or "") if chat else c["text"]
            if c["finish_reason"]:
                assert finish[c["index"]] is None, "two finish reasons for one choice"
                finish[c["index"]] = c["finish_reason"]
    return texts, finish


def greedy_ids(model, ids, max_new):
    out = model.generate(torch.tensor([ids]), max_new, temperature=0, stop_ids=[EOT_ID])[0, len(ids):].tolist()
    return out[:out.index(EOT_ID)] if EOT_ID in out else out


CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a prime number?"},
        {"role": "assistant", "content": "A number with two divisors."}, {"role": "user", "content": "Name one."}]


# ------------------------------------------------------------------ text handling (in-process)

def test_textstream_holds_back_stop_prefixes_and_split_characters():
    from nanophi.textformat import TextStream
    enc = get_tokenizer()
    text = "héllo wörld 日本\n[Human]: more"
    ids = enc.encode_ordinary(text)
    s = TextStream(textformat.stop_strings() + ["<|endoftext|>"], strip=True)
    out = []
    for t in ids:
        out.append(s.add(t))
        assert "\ufffd" not in "".join(out), "half a UTF-8 character was handed out"
        assert "\n" not in "".join(out), "the start of a stop string was handed out"
        if s.finish:
            break
    assert "".join(out) == "héllo wörld 日本" == textformat.cut_reply(text)
    assert s.finish == "stop"
    # no stop found: max_tokens ends it, held-back text comes out, finish 'length'
    s = TextStream(["STOP"], strip=False)
    out = [s.add(t) for t in enc.encode_ordinary("abc ST")]
    assert "".join(out) == "abc " and s.close() == "ST" and s.finish == "length"


def test_a_full_queue_answers_503(local_model):
    from serve import APIError, Worker
    engine = Worker(lambda: SimpleNamespace(model=local_model, device="cpu", dtype="float32"), max_batch=1, max_queue=0)
    with pytest.raises(APIError) as e:
        engine.submit(object())
    assert e.value.status == 503 and e.value.body()["error"]["code"] == "server_busy"


@pytest.mark.slow
def test_bad_settings_exit_with_a_clear_message(tmp_path):
    runs = [(["--temprature=1"], "temperature"), ([f"--out_dir={tmp_path}"], "no checkpoint")]
    procs = [subprocess.Popen([sys.executable, "serve.py", f"--port={free_port()}", *args], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for args, _ in runs]
    for p, (args, words) in zip(procs, runs):
        out = p.communicate(timeout=120)[0]
        assert p.returncode != 0 and words in out and "Traceback" not in out, (args, out)


# ------------------------------------------------------------------ basics

@pytest.mark.slow
def test_health_models_and_page(srv):
    h = srv.health()
    assert h["status"] == "ok" and h["model"] == "nanophi" and h["context_length"] == 128
    assert h["auth_required"] is False
    r = httpx.get(srv.url + "/v1/models")
    assert r.json()["data"][0]["id"] == "nanophi"
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused")
    assert [m.id for m in client.models.list()] == ["nanophi"]
    page = httpx.get(srv.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="tag"' in page.text and "/static/app.js" in page.text
    assert httpx.get(srv.url + "/static/app.js").status_code == 200
    assert httpx.get(srv.url + "/static/style.css").status_code == 200


@pytest.mark.slow
def test_cors_only_for_the_configured_origin(srv):
    pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    ok = httpx.options(srv.url + "/v1/chat/completions", headers={"Origin": "http://app.example", **pre})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://app.example"
    bad = httpx.options(srv.url + "/v1/chat/completions", headers={"Origin": "http://evil.example", **pre})
    assert "access-control-allow-origin" not in bad.headers
    r = httpx.get(srv.url + "/v1/models", headers={"Origin": "http://app.example"})
    assert r.headers["access-control-allow-origin"] == "http://app.example"


@pytest.mark.parametrize("path", ["/static/../serve.py", "/static/%2e%2e/serve.py", "/static/serve.py",
                                  "/static/index.html/../../serve.py", "/../../etc/passwd", "/serve.py",
                                  "/static/", "/static/..%2fserve.py"])
@pytest.mark.slow
def test_no_file_outside_the_page_assets(srv, path):
    # a raw request line, so no client normalises the path first
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split()[1] in (b"404", b"400"), (path, raw[:200])
    assert b"import" not in body and b"root:" not in body


# ------------------------------------------------------------------ what the model says

@pytest.mark.slow
def test_chat_greedy_matches_the_model_and_the_training_format(srv, local_model):
    body = {"model": "nanophi", "messages": CHAT, "max_tokens": 16, "temperature": 0}
    r = post(srv, "/v1/chat/completions", body).json()
    prompt = textformat.encode_prompt(textformat.chat([(m["role"], m["content"]) for m in CHAT[1:]],
                                                      system="Be brief."))
    assert textformat.render_text(textformat.chat([("user", "x")], system="s")).endswith("[Bot]:")
    new = greedy_ids(local_model, prompt, 16)
    assert r["choices"][0]["message"] == {"role": "assistant", "content": textformat.cut_reply(decode(new))}
    assert r["usage"]["prompt_tokens"] == len(prompt)
    assert r["usage"]["total_tokens"] == len(prompt) + r["usage"]["completion_tokens"]
    assert r["object"] == "chat.completion" and r["id"].startswith("chatcmpl-")
    again = post(srv, "/v1/chat/completions", body).json()
    assert again["choices"] == r["choices"]  # greedy is deterministic
    # streamed: the same text, role first, one finish reason, usage at the end when asked
    events = stream_events(srv, "/v1/chat/completions", {**body, "stream_options": {"include_usage": True}})
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    texts, finish = joined(events)
    assert texts[0] == r["choices"][0]["message"]["content"]
    assert finish[0] == r["choices"][0]["finish_reason"]
    assert events[-1]["choices"] == [] and events[-1]["usage"] == r["usage"]


@pytest.mark.slow
def test_completion_greedy_matches_the_model(srv, local_model):
    prompt = "The history of science"
    r = post(srv, "/v1/completions", {"prompt": prompt, "max_tokens": 20, "temperature": 0}).json()
    ids = get_tokenizer().encode_ordinary(prompt)
    new = greedy_ids(local_model, ids, 20)
    c = r["choices"][0]
    assert c["text"] == decode(new)
    assert c["finish_reason"] == ("length" if len(new) == 20 else "stop")
    assert r["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 20 if len(new) == 20 else len(new) + 1,
                          "total_tokens": len(ids) + (20 if len(new) == 20 else len(new) + 1)}
    texts, finish = joined(stream_events(srv, "/v1/completions", {"prompt": prompt, "max_tokens": 20,
                                                                   "temperature": 0}), chat=False)
    assert texts[0] == c["text"] and finish[0] == c["finish_reason"]


@pytest.mark.slow
def test_tag_renders_the_task_prompt(srv):
    q = "What is 12*7?"
    r = post(srv, "/v1/completions", {"prompt": q, "tag": "Math", "max_tokens": 3, "temperature": 0,
                                      "echo": True}).json()
    rendered = textformat.render_text(textformat.prompt_for("math", q))
    assert rendered.endswith("Answer:")
    assert r["choices"][0]["text"].startswith(rendered)
    assert r["usage"]["prompt_tokens"] == len(textformat.encode_prompt(textformat.prompt_for("math", q)))


@pytest.mark.slow
def test_chat_style_and_roleplay_names_render_through_textformat(srv):
    turns = [(m["role"], m["content"]) for m in CHAT[1:]]
    for extra, segs in (
            ({"chat_style": "plain"}, textformat.chat(turns, system="Be brief.", style="plain")),
            ({"chat_style": "metharme", "tag": "Roleplay"},
             textformat.chat(turns, system="Be brief.", task="roleplay", style="metharme")),
            ({"tag": "Roleplay", "user_name": "Kazuma", "bot_name": "Aqua"},
             textformat.chat(turns, system="Be brief.", task="roleplay", user_name="Kazuma", bot_name="Aqua"))):
        r = post(srv, "/v1/chat/completions", {"messages": CHAT, "max_tokens": 2, **extra}).json()
        assert r["usage"]["prompt_tokens"] == len(textformat.encode_prompt(segs)), extra


@pytest.mark.slow
def test_stop_cuts_before_the_stop_string_and_never_streams_past_it(srv):
    body = {"prompt": "Once upon a time", "max_tokens": 30, "temperature": 0, "ignore_eos": True}
    full = post(srv, "/v1/completions", body).json()["choices"][0]["text"]
    # a stop string spanning a token boundary: the end of one token and the start of the next
    parts = [decode([t]) for t in get_tokenizer().encode_ordinary(full)]
    k = next(i for i in range(4, len(parts)) if len(parts[i - 1]) >= 2 and len(parts[i]) >= 2)
    head = "".join(parts[:k])
    stop = head[-2:] + parts[k][:2]
    expect = full[:full.find(stop)]
    for stops in (stop, ["never-there", stop]):
        r = post(srv, "/v1/completions", {**body, "stop": stops}).json()["choices"][0]
        assert r == {**r, "text": expect, "finish_reason": "stop"}
        texts, finish = joined(stream_events(srv, "/v1/completions", {**body, "stop": stops}), chat=False)
        assert texts[0] == expect and finish[0] == "stop"
    # a stop that never appears: full text, 'length'
    r = post(srv, "/v1/completions", {**body, "stop": "never-there"}).json()["choices"][0]
    assert r["text"] == full and r["finish_reason"] == "length"


@pytest.mark.slow
def test_n_and_seed(srv):
    body = {"prompt": "Seeds:", "max_tokens": 8, "temperature": 1.0, "top_k": 0, "n": 3, "seed": 1234,
            "ignore_eos": True}
    r1 = post(srv, "/v1/completions", body).json()
    assert [c["index"] for c in r1["choices"]] == [0, 1, 2]
    texts = [c["text"] for c in r1["choices"]]
    assert len(set(texts)) == 3, texts  # three samples, not one copied
    assert r1["usage"]["completion_tokens"] == 3 * 8
    assert all(c["finish_reason"] == "length" for c in r1["choices"])
    # same seed, same texts, even with other requests running at the same time
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futs = [pool.submit(post, srv, "/v1/completions", b) for b in
                (body, {**body, "seed": 99}, body, {**body, "prompt": "Other", "seed": 7})]
        res = [f.result().json() for f in futs]
    assert [c["text"] for c in res[0]["choices"]] == texts == [c["text"] for c in res[2]["choices"]]
    assert [c["text"] for c in res[1]["choices"]] != texts
    s_texts, s_finish = joined(stream_events(srv, "/v1/completions", body), n=3, chat=False)
    assert s_texts == texts and s_finish == ["length"] * 3
    # a list of prompts: one choice per prompt (times n)
    r = post(srv, "/v1/completions", {"prompt": ["a", "b"], "max_tokens": 2, "n": 2, "seed": 1}).json()
    assert [c["index"] for c in r["choices"]] == [0, 1, 2, 3]
    # chat with n
    r = post(srv, "/v1/chat/completions", {"messages": CHAT, "max_tokens": 6, "n": 2, "seed": 5}).json()
    assert len(r["choices"]) == 2


@pytest.mark.slow
def test_max_completion_tokens_and_finish_reason(srv):
    r = post(srv, "/v1/chat/completions", {"messages": CHAT, "max_completion_tokens": 3, "ignore_eos": True,
                                           "temperature": 0}).json()
    assert r["usage"]["completion_tokens"] == 3 and r["choices"][0]["finish_reason"] == "length"


@pytest.mark.slow
def test_trim_history_fits_a_long_chat(srv):
    long = [{"role": "user" if i % 2 == 0 else "assistant", "content": "word " * 30} for i in range(9)]
    r = post(srv, "/v1/chat/completions", {"messages": long, "max_tokens": 4})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    r = post(srv, "/v1/chat/completions", {"messages": long, "max_tokens": 4, "trim_history": True})
    assert r.status_code == 200, r.text
    assert int(r.headers["x-nanophi-dropped-turns"]) > 0
    # a very long conversation: only the turns that can fit are re-rendered, the answer is trim_chat's
    turns = [("user" if i % 2 == 0 else "assistant", f"turn {i} " + "la " * (i % 7)) for i in range(2001)]
    msgs = [{"role": role, "content": text} for role, text in turns]
    r = post(srv, "/v1/chat/completions", {"messages": msgs, "max_tokens": 100, "trim_history": True})
    assert r.status_code == 200, r.text
    kept = textformat.trim_chat(turns[-60:], 128 // 2)[0]  # budget: max(context - max_tokens, context / 2)
    assert 1 < len(kept) < 60
    assert int(r.headers["x-nanophi-dropped-turns"]) == len(turns) - len(kept)
    assert r.json()["usage"]["prompt_tokens"] == len(textformat.encode_prompt(textformat.chat(kept)))


# ------------------------------------------------------------------ the openai client

@pytest.mark.slow
def test_openai_client_chat_and_completions(srv):
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
    msgs = CHAT[1:2]
    full = client.chat.completions.create(model="nanophi", messages=msgs, max_tokens=12, temperature=0)
    assert full.choices[0].message.role == "assistant"
    assert full.usage.completion_tokens >= 1
    chunks = list(client.chat.completions.create(model="nanophi", messages=msgs, max_tokens=12, temperature=0,
                                                 stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == \
        [full.choices[0].finish_reason]
    comp = client.completions.create(model="nanophi", prompt="Hello", max_tokens=5, temperature=0, seed=3)
    chunks = list(client.completions.create(model="nanophi", prompt="Hello", max_tokens=5, temperature=0,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks) == comp.choices[0].text
    extra = client.chat.completions.create(model="nanophi", messages=msgs, max_tokens=4, seed=1, stop=["\n"],
                                           extra_body={"top_k": 5, "repetition_penalty": 1.3, "tag": "Roleplay"})
    assert extra.choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=msgs)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="nanophi", messages=msgs, max_tokens=10 ** 6)
    assert e.value.body["param"] == "max_tokens"


# ------------------------------------------------------------------ bad input

BAD = [  # (path, raw body or json, status, param, code)
    ("/v1/chat/completions", b"{not json", 400, None, "invalid_json"),
    ("/v1/chat/completions", b"[1, 2]", 400, None, "invalid_type"),
    ("/v1/chat/completions", b"\xff\xfe\x00garbage", 400, None, "invalid_json"),
    ("/v1/chat/completions", {}, 400, "messages", "missing_required_parameter"),
    ("/v1/chat/completions", {"messages": "hi"}, 400, "messages", "invalid_type"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages", "invalid_type"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role", None),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content", None),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
     400, "messages", None),
    ("/v1/chat/completions", {"messages": CHAT, "temperature": "hot"}, 400, "temperature", "invalid_type"),
    ("/v1/chat/completions", {"messages": CHAT, "temperature": 3}, 400, "temperature", "invalid_value"),
    ("/v1/chat/completions", {"messages": CHAT, "top_p": 0}, 400, "top_p", "invalid_value"),
    ("/v1/chat/completions", {"messages": CHAT, "top_k": 1.5}, 400, "top_k", "invalid_type"),
    ("/v1/chat/completions", {"messages": CHAT, "n": 0}, 400, "n", "invalid_value"),
    ("/v1/chat/completions", {"messages": CHAT, "n": 99}, 400, "n", "invalid_value"),
    ("/v1/chat/completions", {"messages": CHAT, "max_tokens": True}, 400, "max_tokens", "invalid_type"),
    ("/v1/chat/completions", {"messages": CHAT, "max_tokens": 0}, 400, "max_tokens", "invalid_value"),
    ("/v1/chat/completions", {"messages": CHAT, "max_tokens": 10 ** 9}, 400, "max_tokens", "max_tokens_exceeded"),
    ("/v1/chat/completions", {"messages": CHAT, "stop": ["a", 1]}, 400, "stop", "invalid_value"),
    ("/v1/chat/completions", {"messages": CHAT, "stop": [""]}, 400, "stop", "invalid_value"),
    ("/v1/chat/completions", {"messages": CHAT, "stream": "yes"}, 400, "stream", "invalid_type"),
    ("/v1/chat/completions", {"messages": CHAT, "seed": "x"}, 400, "seed", "invalid_type"),
    ("/v1/chat/completions", {"messages": CHAT, "model": "gpt-4"}, 404, "model", "model_not_found"),
    ("/v1/chat/completions", {"messages": CHAT, "chat_style": "xml"}, 400, "chat_style", "invalid_value"),
    ("/v1/chat/completions", {"messages": CHAT, "tag": "Poetry"}, 400, "tag", "invalid_value"),
    ("/v1/chat/completions", {"messages": CHAT, "logprobs": True}, 400, "logprobs", "unsupported"),
    ("/v1/chat/completions", {"messages": CHAT, "frequency_penalty": 0.5}, 400, "frequency_penalty", "unsupported"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "word " * 200}]}, 400, "messages",
     "context_length_exceeded"),
    ("/v1/completions", {"prompt": "word " * 200}, 400, "prompt", "context_length_exceeded"),
    ("/v1/completions", {}, 400, "prompt", "missing_required_parameter"),
    ("/v1/completions", {"prompt": 5}, 400, "prompt", "invalid_type"),
    ("/v1/completions", {"prompt": ["ok", None]}, 400, "prompt", "invalid_type"),
    ("/v1/completions", {"prompt": [1, 99999]}, 400, "prompt", "invalid_value"),
    ("/v1/completions", {"prompt": ""}, 400, "prompt", "invalid_value"),
    ("/v1/completions", {"prompt": "x" * 200_000}, 413, None, "request_too_large"),
]


@pytest.mark.slow
@pytest.mark.parametrize("path,body,status,param,code", BAD, ids=[f"{i}" for i in range(len(BAD))])
def test_bad_input_gets_an_openai_error(srv, path, body, status, param, code):
    if isinstance(body, bytes):
        r = httpx.post(srv.url + path, content=body, headers={"content-type": "application/json"}, timeout=30)
    else:
        r = post(srv, path, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param
    if code:
        assert err["code"] == code


@pytest.mark.slow
def test_bad_requests_leave_the_server_healthy(srv):
    # a body sent in chunks without a content-length, over the limit
    def chunks():
        for _ in range(30):
            yield b"x" * 10_000
    r = httpx.post(srv.url + "/v1/completions", content=chunks(), timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert httpx.get(srv.url + "/v1/nowhere").json()["error"]["code"] == "not_found"
    assert httpx.delete(srv.url + "/v1/models").status_code == 405
    h = srv.health()
    assert h["status"] == "ok" and h["errors"] == 0
    assert post(srv, "/v1/completions", {"prompt": "still alive", "max_tokens": 2}).status_code == 200
    assert "Traceback" not in open(srv.log_path).read()


@pytest.mark.slow
def test_deeply_nested_json_is_a_400_not_a_500(auth_srv):
    from serve import APIError, parse_json
    deep = b"[" * 100_000 + b"]" * 100_000  # 200 KB: under the default 1 MB limit
    with pytest.raises(APIError) as e:
        parse_json(deep)
    assert e.value.status == 400 and "nested too deeply" in e.value.message
    for body in (deep, b'{"messages": ' + deep + b"}"):
        r = httpx.post(auth_srv.url + "/v1/chat/completions", content=body, timeout=30,
                       headers={"content-type": "application/json", "Authorization": f"Bearer {KEY}"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json", r.text
    assert health_of(auth_srv, KEY)["errors"] == 0


# ------------------------------------------------------------------ batching and cache reuse

@pytest.mark.slow
def test_concurrent_requests_decode_together_and_each_gets_its_greedy_text(srv, local_model):
    prompts = ["Hi", "The history of science is long and", "Once upon a time in a land far away, there lived",
               "x", "Numbers: 1 2 3 4 5 6 7 8 9 10 11 12"]
    want = [decode(greedy_ids(local_model, get_tokenizer().encode_ordinary(p), 24)) for p in prompts]
    before = wait_idle(srv)
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        futs = [pool.submit(post, srv, "/v1/completions", {"prompt": p, "max_tokens": 24, "temperature": 0})
                for p in prompts]
        got = [f.result().json()["choices"][0]["text"] for f in futs]
    assert got == want
    after = wait_idle(srv)
    tokens, steps = after["generated_tokens"] - before["generated_tokens"], after["steps"] - before["steps"]
    assert steps < tokens  # rows shared forward passes (this server decodes 2 at a time)


@pytest.mark.slow
def test_a_continued_conversation_reuses_its_cache(srv, local_model):
    msgs = [{"role": "user", "content": "Tell me about the moon and the stars."}]
    r1 = post(srv, "/v1/chat/completions", {"messages": msgs, "max_tokens": 12, "temperature": 0}).json()
    before = wait_idle(srv)["reused_prompt_tokens"]
    msgs += [r1["choices"][0]["message"], {"role": "user", "content": "And the sun?"}]
    r2 = post(srv, "/v1/chat/completions", {"messages": msgs, "max_tokens": 12, "temperature": 0}).json()
    assert wait_idle(srv)["reused_prompt_tokens"] - before >= r1["usage"]["prompt_tokens"]
    prompt = textformat.encode_prompt(textformat.chat([(m["role"], m["content"]) for m in msgs]))
    assert r2["choices"][0]["message"]["content"] == textformat.cut_reply(decode(greedy_ids(local_model, prompt, 12)))


# ------------------------------------------------------------------ auth

@pytest.mark.slow
def test_api_key_is_required_on_every_v1_route(auth_srv):
    u = auth_srv.url
    body = {"messages": CHAT[1:2], "max_tokens": 3}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": "Basic " + KEY}):
        for method, path in (("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("GET", "/v1/models")):
            r = httpx.request(method, u + path, json=body, headers=headers, timeout=30)
            assert r.status_code == 401, (headers, path)
            assert r.json()["error"]["code"] == "invalid_api_key"
    ok = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(u + "/v1/models", headers=ok).json()["data"][0]["id"] == "tiny-hf"
    assert httpx.get(u + "/health").json()["auth_required"] is True  # health and the page stay open
    assert httpx.get(u + "/").status_code == 200
    client = openai.OpenAI(base_url=u + "/v1", api_key=KEY, max_retries=0)
    r = client.chat.completions.create(model="tiny-hf", messages=body["messages"], max_tokens=3)
    assert r.model == "tiny-hf" and r.usage.completion_tokens >= 1
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=u + "/v1", api_key="nope", max_retries=0).models.list()


# ------------------------------------------------------------------ disconnects

def wait_idle(srv, timeout=30):
    t0, last = time.time(), None
    while time.time() - t0 < timeout:
        h = srv.health()
        if h["active"] == 0 and h["queued"] == 0 and h["generated_tokens"] == last:
            return h
        last = h["generated_tokens"]
        time.sleep(0.3)
    raise AssertionError(f"server still busy after {timeout}s: {h}")


@pytest.mark.slow
def test_a_client_that_disconnects_stops_its_generation(srv):
    before = wait_idle(srv)
    body = {"prompt": "Go on and on", "max_tokens": 20000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=30) as r:
        seen = 0
        for line in r.iter_lines():
            seen += line.startswith("data: ")
            if seen >= 5:
                t0 = time.time()
                assert srv.health()["active"] == 1  # the event loop answers while the model works
                assert time.time() - t0 < 5
                break  # leave mid-stream: the connection closes
    after = wait_idle(srv)
    generated = after["generated_tokens"] - before["generated_tokens"]
    assert 5 <= generated < 20000, generated
    assert after["cancelled"] == before["cancelled"] + 1
    # a non-streaming client that gives up (timeout) also stops its generation
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(srv.url + "/v1/completions", json={**body, "stream": False}, timeout=0.5)
    final = wait_idle(srv)
    assert final["generated_tokens"] - after["generated_tokens"] < 20000
    assert final["cancelled"] == after["cancelled"] + 1
    assert open(srv.log_path).read().count("request cancelled (client gone)") == 2
    assert post(srv, "/v1/completions", {"prompt": "next", "max_tokens": 2}).status_code == 200


# ------------------------------------------------------------------ one client cannot take the server down

@pytest.mark.slow
def test_prompt_arrays_times_n_are_capped_at_max_n(srv):
    # max_n=8 choices per request in all, as OpenAI bounds n: 3 prompts x n=3 is 9
    for prompt, n in ((["a", "b", "c"], 3), (["x"] * 1000, 1), ([[15496]] * 9, 1)):
        r = post(srv, "/v1/completions", {"prompt": prompt, "n": n, "max_tokens": 1})
        assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_choices", (len(prompt), n, r.text)
    r = post(srv, "/v1/completions", {"prompt": ["a", "b"], "n": 4, "max_tokens": 1})
    assert r.status_code == 200 and len(r.json()["choices"]) == 8


def test_cancelling_many_rows_takes_one_pass(local_model):
    from nanophi.engine import Row
    from serve import Job, Worker
    worker = Worker(lambda: SimpleNamespace(model=local_model, device="cpu", dtype="float32"), max_batch=1, max_queue=1)
    # two requests' rows waiting in the engine; the second one's client leaves
    stay, leave = (Job([[1]], {"n": 1, "stream": True}, {}, None) for _ in range(2))
    for job in (stay, leave):
        job.rows = [Row([1], 1) for _ in range(5000)]
        for r in job.rows:
            worker.engine.add(r)
        worker.jobs.append(job)
    leave.cancel.set()
    t0 = time.perf_counter()
    worker._drop_cancelled()
    took = time.perf_counter() - t0
    assert worker.engine.waiting == stay.rows and worker.jobs == [stay]
    assert took < 1.0, f"cancelling 5,000 rows behind 5,000 others took {took:.1f}s"


@pytest.mark.slow
def test_half_open_connections_time_out_and_health_still_answers(srv):
    # srv runs with --timeout_header=2: sockets that never finish their headers are closed
    socks = []
    for i in range(40):
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        if i % 2:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
        socks.append(s)
    try:
        t0 = time.time()
        assert srv.health()["status"] == "ok" and time.time() - t0 < 2
        for s in socks:
            assert s.recv(100) == b"", "a half-open connection was answered"
        assert time.time() - t0 < 8, "half-open connections were held past the header timeout"
        # a body that never completes is bounded too: the connection is answered with a 408
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"prompt\"")
            assert s.recv(100).startswith(b"HTTP/1.1 408")
    finally:
        for s in socks:
            s.close()
    assert "Traceback" not in open(srv.log_path).read()


def health_of(srv, key=None):
    return httpx.get(srv.url + "/health", headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=5).json()


@pytest.mark.slow
def test_health_is_minimal_without_the_key_and_the_cache_is_per_key(auth_srv):
    assert health_of(auth_srv) == {"status": "ok", "auth_required": True}
    assert health_of(auth_srv, "wrong") == {"status": "ok", "auth_required": True}
    assert "reused_prompt_tokens" in health_of(auth_srv, KEY)
    secret = [{"role": "system", "content": "The secret names are Alice Zebediah and Bob Quixote."},
              {"role": "user", "content": "Hello there"}]

    def ask(key):
        r = httpx.post(auth_srv.url + "/v1/chat/completions", json={"messages": secret, "max_tokens": 2,
                       "temperature": 0}, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        assert r.status_code == 200, r.text
        time.sleep(0.3)
        return health_of(auth_srv, KEY)["reused_prompt_tokens"]

    first = ask(KEY)
    assert ask(KEY2) == first, "another key's prompt tokens were reused"
    assert ask(KEY) > first  # within one key the cache still works


@pytest.mark.slow
def test_json_only_known_hosts_and_no_cross_origin_posts_without_a_key(srv):
    body = json.dumps({"prompt": "hi", "max_tokens": 1})
    r = httpx.post(srv.url + "/v1/completions", content=body, headers={"content-type": "text/plain"}, timeout=30)
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    assert httpx.post(srv.url + "/v1/completions", content=body, timeout=30).status_code == 415
    # DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends Host: evil.example
    r = httpx.get(srv.url + "/health", headers={"Host": "evil.example"})
    assert r.status_code == 421 and r.json()["error"]["code"] == "invalid_host"
    evil = {"Host": f"evil.example:{srv.port}", "content-type": "application/json"}
    assert httpx.post(srv.url + "/v1/completions", content=body, timeout=30, headers=evil).status_code == 421
    assert httpx.get(srv.url + "/health", headers={"Host": f"localhost:{srv.port}"}).status_code == 200
    assert httpx.get(srv.url + "/health", headers={"Host": f"[::1]:{srv.port}"}).status_code == 200
    for origin, status in (("http://evil.example", 403), ("null", 403), (srv.url, 200), ("http://app.example", 200)):
        r = post(srv, "/v1/completions", {"prompt": "hi", "max_tokens": 1}, headers={"Origin": origin})
        assert r.status_code == status, (origin, r.text)


def read_stream(url, body, out, i):
    """A streamed request's raw body, or the exception that ended it, into out[i]."""
    try:
        with httpx.stream("POST", url + "/v1/completions", json={**body, "stream": True}, timeout=60) as r:
            out[i] = b""
            for chunk in r.iter_bytes():
                out[i] += chunk
    except Exception as e:
        out[i] = e


@pytest.mark.slow
def test_sigterm_drains_in_flight_and_queued_streams(tiny_out_dir, tmp_path):
    import signal
    import threading
    s = Server([f"--out_dir={tiny_out_dir}", "--max_batch=1", "--drain_timeout=2", "--max_tokens_cap=100000"],
               str(tmp_path / "drain.log")).wait()
    try:
        body = {"prompt": "Go on and on", "max_tokens": 100000, "ignore_eos": True}
        out = [None, None]
        a = threading.Thread(target=read_stream, args=(s.url, body, out, 0))
        a.start()
        t0 = time.time()
        while not (isinstance(out[0], bytes) and out[0].count(b"data: ") >= 3):
            assert time.time() - t0 < 30 and a.is_alive(), out
            time.sleep(0.1)
        b = threading.Thread(target=read_stream, args=(s.url, body, out, 1))  # queued behind a (max_batch=1)
        b.start()
        while s.health()["queued"] < 1:
            assert time.time() - t0 < 30
            time.sleep(0.1)
        t_term = time.time()
        s.proc.send_signal(signal.SIGTERM)
        a.join(20)
        b.join(20)
        assert s.proc.wait(20) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained
        assert time.time() - t_term < 12, "the drain is not bounded"
        for raw in out:
            assert isinstance(raw, bytes), raw
            blocks = raw.decode().split("\n\n")
            assert blocks[-2] == "data: [DONE]", raw[-300:]
            assert json.loads(blocks[-3][6:])["error"]["code"] == "server_shutting_down"
        assert out[0].count(b"data: ") > 3 and out[1].count(b"data: ") == 2  # b never started: error, [DONE]
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
        s.log.close()
