import os
import subprocess
import sys

from conftest import ROOT
from nanophi.tokenizer import EOT_ID, VOCAB_SIZE, decode, encode, get_tokenizer


def test_known_gpt2_ids():
    enc = get_tokenizer()
    assert enc.n_vocab == VOCAB_SIZE == 50257 and EOT_ID == 50256
    assert encode("Hello world") == [15496, 995]
    assert encode("[Math] 6+6=12") == [58, 37372, 60, 718, 10, 21, 28, 1065]
    assert enc.encode("<|endoftext|>", allowed_special="all") == [EOT_ID]
    # the old projects' end markers are several tokens; ours is one id
    assert len(encode("<eot>")) == 4 and len(encode("<endOfText>")) == 5
    assert len(encode("<|endoftext|>")) == 7  # as ordinary text it is never the special id
    for tag, n in [("[Textbook]", 4), ("[Logic]", 4), ("[Roleplay]", 4), ("[Excerpt]", 4),
                   ("[Code]", 3), ("[Math]", 3), ("[Response]", 3)]:
        assert len(encode(tag)) == n, tag


def test_round_trip_unicode():
    text = "naïve café — 日本語 🙂\n\tdef f(x):\n        return x"
    assert decode(encode(text)) == text


def test_missing_tokenizer_gives_clear_error(tmp_path):
    env = dict(os.environ, NANOPHI_GPT2_RANKS=str(tmp_path / "absent.tiktoken"),
               TIKTOKEN_CACHE_DIR=str(tmp_path / "tk"))
    r = subprocess.run([sys.executable, "-c", "from nanophi import tokenizer; tokenizer.get_tokenizer()"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "python -m nanophi.tokenizer --setup" in r.stderr and "absent.tiktoken" in r.stderr


def test_wrong_ranks_file_is_rejected(tmp_path):
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("YQ== 0\n")
    env = dict(os.environ, NANOPHI_GPT2_RANKS=str(bad))
    r = subprocess.run([sys.executable, "-c", "from nanophi import tokenizer; tokenizer.get_tokenizer()"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "not GPT-2's" in r.stderr
