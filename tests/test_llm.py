"""nanophi/llm.py against a real HTTP server on loopback: which key goes where, a total deadline and a
reply-size cap that hold whatever the server does, one-line errors for 200 replies that are no completion."""
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nanophi import llm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "sk-test-secret-0123456789"
COMPLETION = {"id": "c1", "object": "chat.completion", "created": 0, "model": "m",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


class Endpoint:
    """A loopback server whose reply is chosen by `mode`; it records every request's headers and how many
    body bytes it sent. Its slow and endless replies stop by themselves (time and byte bounds)."""

    def __init__(self, mode):
        self.mode, self.headers, self.sent = mode, [], 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                owner.headers.append({k.lower(): v for k, v in self.headers.items()})
                owner.reply(self)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reply(self, h):
        body = {"ok": json.dumps(COMPLETION), "empty": "{}", "no_choices": json.dumps(dict(COMPLETION, choices=[])),
                "html": "<html><body>It works!</body></html>"}.get(self.mode)
        if body is not None:
            data = body.encode()
            h.send_response(200)
            h.send_header("Content-Type", "text/html" if self.mode == "html" else "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
            return
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        try:
            if self.mode == "trickle":  # a byte a second, for at most 20 s
                for c in (json.dumps(COMPLETION).encode() * 10)[:20]:
                    h.wfile.write(b"1\r\n" + bytes([c]) + b"\r\n")
                    h.wfile.flush()
                    self.sent += 1
                    time.sleep(1.0)
            else:  # endless: 64 KiB chunks until the client hangs up, at most 256 MiB
                chunk = b" " * 65536
                for _ in range(4096):
                    h.wfile.write(b"10000\r\n" + chunk + b"\r\n")
                    self.sent += len(chunk)
        except OSError:  # the client hung up: what the test wants
            pass
        h.close_connection = True

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint(request):
    e = Endpoint(request.param)
    yield e
    e.close()


def _ask(e, tmp_path, timeout=5.0, key=("", "")):
    req = [{"key": "k1", "messages": [{"role": "user", "content": "hello"}]}]
    return llm.run_requests(req, str(tmp_path / "out.jsonl"), e.url, "m", *key, timeout=timeout, max_retries=0,
                            progress=False)


@pytest.mark.parametrize("endpoint", ["ok"], indirect=True)
def test_environment_key_goes_only_to_the_openai_host(endpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    assert llm.api_key_for("https://api.openai.com/v1") == (SECRET, "OPENAI_API_KEY")
    for url in ("http://api.openai.com/v1", "https://api.openai.com.evil.example/v1", endpoint.url):
        assert llm.api_key_for(url)[0] == "", url
    done, _ = _ask(endpoint, tmp_path, key=llm.api_key_for(endpoint.url))
    assert done["k1"]["text"] == "hi"
    monkeypatch.setenv("MY_LOCAL_KEY", "local-key")  # named by the user: sent to the url they gave
    (tmp_path / "out.jsonl").unlink()
    _ask(endpoint, tmp_path, key=llm.api_key_for(endpoint.url, "MY_LOCAL_KEY"))
    auth = [h.get("authorization", "") for h in endpoint.headers]
    assert len(auth) == 2 and SECRET not in " ".join(json.dumps(h) for h in endpoint.headers), auth
    assert auth[1] == "Bearer local-key"
    with pytest.raises(llm.EndpointError, match=r"api_key_env=UNSET_KEY_XYZ: \$UNSET_KEY_XYZ is not set"):
        llm.api_key_for(endpoint.url, "UNSET_KEY_XYZ")


def _synthesize(url, tmp_path, *args):
    env = dict(os.environ, OPENAI_API_KEY=SECRET)
    return subprocess.run([sys.executable, "data/synthesize.py", f"--base_url={url}", "--max_docs=1",
                           f"--out={tmp_path / 'synth.jsonl'}", "--progress=False", "--max_retries=0", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("endpoint", ["ok"], indirect=True)
def test_synthesize_does_not_send_the_environment_key_to_a_local_port(endpoint, tmp_path):
    r = _synthesize(endpoint.url, tmp_path)
    assert r.returncode == 0, r.stderr
    assert SECRET not in json.dumps(endpoint.headers)
    assert "not sent" in r.stderr
    r = _synthesize(endpoint.url, tmp_path / "b", "--api_key_env=OPENAI_API_KEY")  # the user's choice
    assert r.returncode == 0, r.stderr
    assert endpoint.headers[-1]["authorization"] == f"Bearer {SECRET}"


@pytest.mark.parametrize("endpoint", ["trickle"], indirect=True)
def test_a_trickling_reply_ends_at_the_timeout(endpoint, tmp_path):
    t0 = time.time()
    with pytest.raises(llm.EndpointError, match=r"no complete reply within 2 s"):
        _ask(endpoint, tmp_path, timeout=2.0)
    assert time.time() - t0 < 4.0


@pytest.mark.parametrize("endpoint", ["endless"], indirect=True)
def test_an_endless_reply_stops_at_the_size_cap(endpoint, tmp_path):
    with pytest.raises(llm.EndpointError, match=r"larger than 8 MiB"):
        _ask(endpoint, tmp_path, timeout=60.0)
    time.sleep(0.2)
    # the client hung up soon after the cap: what the server got out is the cap plus what the loopback's
    # socket buffers hold (the kernel grows a receive buffer up to tcp_rmem's max: 32 MiB here, and one CI
    # run under load saw 16.1 MiB sent), far below the 256 MiB an endless read would take
    assert endpoint.sent < llm.MAX_REPLY_BYTES + _socket_buffers() + 8 * 2**20


def _socket_buffers():
    """The most bytes the kernel may hold in flight on one TCP connection: the receive and send buffers'
    maxima (Linux), else 40 MiB."""
    try:
        return sum(int(open(f"/proc/sys/net/ipv4/tcp_{k}mem").read().split()[2]) for k in ("r", "w"))
    except (OSError, ValueError, IndexError):
        return 40 * 2**20


@pytest.mark.slow
@pytest.mark.parametrize("endpoint", ["html", "empty", "no_choices"], indirect=True)
def test_a_200_reply_that_is_no_completion_is_one_line_with_the_resume_hint(endpoint, tmp_path):
    r = _synthesize(endpoint.url, tmp_path)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert "not a chat completion" in r.stderr and "rerun the same command to resume" in r.stderr, r.stderr
