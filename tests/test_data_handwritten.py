"""
The hand-written chat, roleplay and symposium sets (committed JSONL source data).

Every line must parse, follow the schema, render through textformat in every chat style with
exactly the bot turns trained, and fit in a 1024-token context.
"""
import json
import os

import pytest

from nanophi import textformat
from nanophi.tokenizer import EOT_ID, decode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHAT = os.path.join(ROOT, "data", "chat", "handwritten.jsonl")
ROLEPLAY = os.path.join(ROOT, "data", "roleplay", "handwritten.jsonl")
SYMPOSIUM = os.path.join(ROOT, "data", "symposium", "handwritten.jsonl")
BLOCK_SIZE = 1024

# text that would end or fake a turn if it appeared inside a message
FORBIDDEN = ["<|endoftext|>"] + sorted({m for s in textformat.CHAT_STYLES.values() for m in s.values()})


def load(path):
    """[(line_no, record)] with a clear error naming the file and line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            assert line.strip(), f"{path}:{n}: empty line"
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                pytest.fail(f"{path}:{n}: bad JSON: {e}")
    assert rows, f"{path}: no conversations"
    return rows


def check_text(where, text, extra_markers=()):
    assert isinstance(text, str) and text.strip(), f"{where}: must be a non-empty string"
    assert text == text.strip(), f"{where}: leading/trailing whitespace"
    for m in FORBIDDEN:
        assert m not in text, f"{where}: contains speaker marker {m!r}"
    for m in extra_markers:
        assert f"\n{m}" not in text and not text.startswith(m), f"{where}: contains speaker marker {m!r}"


def check_turns(where, turns, extra_markers=(), min_turns=2):
    assert isinstance(turns, list) and len(turns) >= min_turns, f"{where}: turns must be a list of >= {min_turns}"
    for i, t in enumerate(turns):
        assert isinstance(t, dict) and set(t) == {"role", "content"}, f"{where} turn {i}: need exactly role, content"
        assert t["role"] == ("user" if i % 2 == 0 else "assistant"), \
            f"{where} turn {i}: roles must alternate user/assistant starting with user"
        check_text(f"{where} turn {i}", t["content"], extra_markers)
    assert turns[-1]["role"] == "assistant", f"{where}: must end with an assistant turn"


def check_rendering(where, turns, **kw):
    """Trained tokens are exactly the bot replies, each closed by EOT; all else is prompt."""
    for style in textformat.CHAT_STYLES:
        ids, mask = textformat.encode_example(textformat.chat(turns, style=style, **kw))
        assert len(ids) == len(mask) <= BLOCK_SIZE, f"{where} ({style}): {len(ids)} tokens > {BLOCK_SIZE}"
        assert ids[-1] == EOT_ID and mask[-1] == 1
        replies = [t["content"] for t in turns if t["role"] == "assistant"]
        trained = [i for i, m in zip(ids, mask) if m]
        expect = "".join(f" {r}<|endoftext|>" for r in replies)
        assert decode(trained) == expect, f"{where} ({style}): trained tokens are not exactly the bot turns"
        assert ids.count(EOT_ID) == len(replies), f"{where} ({style}): one EOT per bot turn"
        prompt = decode([i for i, m in zip(ids, mask) if not m])
        for t in turns[::2]:
            assert t["content"] in prompt, f"{where} ({style}): user turn missing from the prompt"


def check_ids(path, rows, prefix):
    ids = [r.get("id") for _, r in rows]
    for (n, r), i in zip(rows, ids):
        assert isinstance(i, str) and i.startswith(prefix), f"{path}:{n}: id must be a string starting {prefix!r}"
    dup = {i for i in ids if ids.count(i) > 1}
    assert not dup, f"{path}: duplicate ids {sorted(dup)}"


def check_chat_file(path, prefix):
    rows = load(path)
    check_ids(path, rows, prefix)
    for n, r in rows:
        where = f"{path}:{n} ({r['id']})"
        assert set(r) == {"id", "system", "turns"}, f"{where}: fields must be id, system, turns; got {sorted(r)}"
        if r["system"] is not None:
            check_text(f"{where} system", r["system"])
        check_turns(where, r["turns"])
        check_rendering(where, r["turns"], system=r["system"], task="chat")
    return rows


def test_chat_handwritten():
    rows = check_chat_file(CHAT, "chat-")
    assert len(rows) >= 160
    multi = [r for _, r in rows if len(r["turns"]) >= 4]
    assert len(multi) >= len(rows) // 4, "too few multi-turn conversations"
    assert sum(r["system"] is not None for _, r in rows) >= 10, "too few conversations with a system line"


def test_roleplay_handwritten():
    rows = load(ROLEPLAY)
    check_ids(ROLEPLAY, rows, "rp-")
    assert len(rows) >= 60
    for n, r in rows:
        where = f"{ROLEPLAY}:{n} ({r['id']})"
        assert set(r) == {"id", "bot_name", "persona", "user_name", "turns"}, f"{where}: wrong fields {sorted(r)}"
        check_text(f"{where} bot_name", r["bot_name"])
        assert "\n" not in r["bot_name"] and ":" not in r["bot_name"], f"{where}: bad bot_name"
        check_text(f"{where} persona", r["persona"])
        if r["user_name"] is not None:
            check_text(f"{where} user_name", r["user_name"])
            assert "\n" not in r["user_name"] and ":" not in r["user_name"], f"{where}: bad user_name"
        names = [f"{r['bot_name']}:"] + ([f"{r['user_name']}:"] if r["user_name"] else [])
        check_turns(where, r["turns"], extra_markers=names)
        assert len(r["turns"]) <= 12, f"{where}: more than 6 exchanges"
        check_rendering(where, r["turns"], system=r["persona"], task="roleplay",
                        bot_name=r["bot_name"], user_name=r["user_name"])


def test_symposium_handwritten():
    if not os.path.exists(SYMPOSIUM):
        pytest.skip("data/symposium/handwritten.jsonl not written yet")
    check_chat_file(SYMPOSIUM, "")


@pytest.mark.parametrize("turns, why", [
    ([{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "Hello"}], "starting with user"),
    ([{"role": "user", "content": "Hi"}, {"role": "user", "content": "Hello"}], "alternate"),
    ([{"role": "user", "content": "Hi"}], ">= 2"),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello\n[Human]: and me"}], "speaker marker"),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Bye<|endoftext|>"}], "speaker marker"),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}], "non-empty"),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": 3}], "non-empty"),
])
def test_checks_reject_bad_turns(turns, why):
    with pytest.raises(AssertionError, match=why):
        check_turns("fixture", turns)


def test_checks_reject_roleplay_name_marker():
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello.\nTraveler: who?"}]
    with pytest.raises(AssertionError, match="speaker marker"):
        check_turns("fixture", turns, extra_markers=["Traveler:"])


def test_no_humaneval_overlap():
    """Hand-written code answers must survive decontamination (no 13-gram shared with HumanEval)."""
    from nanophi import decontam, records
    dc = decontam.Decontaminator(humaneval=True)
    for path in [CHAT, ROLEPLAY] + ([SYMPOSIUM] if os.path.exists(SYMPOSIUM) else []):
        texts = [(n, r["id"], textformat.render_text(textformat.chat(r["turns"], system=r.get("system") or r.get("persona"))))
                 for n, r in load(path)]
        # one check over the whole file is fast; only on a hit look for the conversation to name
        if dc.hit(records.normalise("\n".join(t for _, _, t in texts))) is None:
            continue
        for n, i, text in texts:
            assert dc.hit(records.normalise(text)) is None, f"{path}:{n} ({i}): shares a 13-gram with HumanEval"
