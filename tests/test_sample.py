"""sample.py: CLI parity with transformers, stops, streaming, repetition controls, chat."""
import io
import json
import os
import subprocess
import sys

import pytest
import torch

from nanophi import textformat
from conftest import ROOT
from nanophi.tokenizer import EOT_ID, decode, encode, get_tokenizer

import sample
from nanophi.engine import Engine

ENV = dict(os.environ, PYTHONIOENCODING="utf-8")


def run(args, stdin=None):
    """Run sample.py; returns the CompletedProcess (stdout is generated text only)."""
    return subprocess.run([sys.executable, os.path.join(ROOT, "sample.py")] + args, input=stdin,
                          capture_output=True, text=True, encoding="utf-8", env=ENV, cwd=ROOT, timeout=120)


@pytest.fixture(scope="module")
def tiny_model(tiny_out_dir):
    from nanophi.checkpoint import load_model
    model, _ = load_model("resume", tiny_out_dir)
    return model


def hf_greedy(hf_dir, prompt, n):
    from transformers import GPT2LMHeadModel
    hf = GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    x = torch.tensor([encode(prompt)])
    with torch.no_grad():
        y = hf.generate(x, max_new_tokens=n, do_sample=False, pad_token_id=EOT_ID)
    new = y[0, x.size(1):].tolist()
    if EOT_ID in new:
        new = new[:new.index(EOT_ID)]
    return new


# ------------------------------------------------------------------ CLI

@pytest.mark.slow
def test_greedy_parity_with_transformers(tiny_hf_dir):
    prompt = "The quick brown fox"
    want = decode(hf_greedy(tiny_hf_dir, prompt, 40))
    assert len(want) > 40  # a real completion, not an immediate end-of-text
    r = run([f"--init_from={tiny_hf_dir}", "--temperature=0", f"--start={prompt}", "--max_new_tokens=40"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == want + "\n"


@pytest.mark.slow
def test_tag_echo_and_stream_equal_plain(tiny_out_dir, tiny_model):
    args = [f"--out_dir={tiny_out_dir}", "--tag=math", "--start=What is 12*7?", "--echo=True", "--temperature=0",
            "--top_k=5", "--num_samples=2", "--max_new_tokens=30"]
    plain = run(args)
    assert plain.returncode == 0, plain.stderr
    head = textformat.render_text(textformat.qa("math", "What is 12*7?"))
    assert head == "[Math] What is 12*7?\nAnswer:"
    ids = textformat.encode_prompt(textformat.qa("math", "What is 12*7?"))
    completion, _ = Engine(tiny_model).complete(ids, 30, temperature=0)
    assert len(completion) > 30
    assert plain.stdout == (head + completion + "\n---------------\n") * 2
    streamed = run(args + ["--stream=True"])
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == plain.stdout


@pytest.mark.parametrize("args, needle", [
    (["--tag=Maths"], "unknown tag 'Maths'"),
    (["--start=FILE:/no/such/prompt.txt"], "/no/such/prompt.txt"),
    (["--top_q=0.9"], "did you mean top_p"),
])
@pytest.mark.slow
def test_bad_input_errors(tiny_out_dir, args, needle):
    r = run([f"--out_dir={tiny_out_dir}"] + args)
    assert r.returncode == 2
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""


@pytest.mark.slow
def test_piped_chat_session(tiny_out_dir, tmp_path):
    save1, save2 = tmp_path / "one.json", tmp_path / "two.json"
    script = "\n".join(["hello there", "how are you?", "/undo", f"/save {save1}", "/reset", "/nonsense",
                        "who are you?", f"/save {save2}", ""])
    r = run([f"--out_dir={tiny_out_dir}", "--chat=True", "--max_new_tokens=12", "--temperature=0",
             "--system=You are terse."], stdin=script)
    assert r.returncode == 0, r.stderr
    replies = r.stdout.splitlines()
    assert len(replies) == 3  # one line per message; commands print to stderr
    one = json.loads(save1.read_text())
    assert one["system"] == "You are terse."
    assert [t["role"] for t in one["turns"]] == ["user", "assistant"]  # /undo took back the 2nd exchange
    assert one["turns"][0]["content"] == "hello there" and one["turns"][1]["content"] == replies[0]
    two = json.loads(save2.read_text())  # /reset forgot everything before
    assert [t["content"] for t in two["turns"]] == ["who are you?", replies[2]]
    assert "unknown command '/nonsense'" in r.stderr


# ------------------------------------------------------------------ prompts and stops

def training_prompt(task):
    """The text in front of the answer in a training example of the task (its unmasked segments)."""
    if task in ("math", "logic"):
        example = textformat.qa(task, "Some text.", "42")
    elif task == "excerpt":
        example = textformat.excerpt("Some text.", "A reply.")
    elif task in ("chat", "roleplay"):
        example = textformat.chat([("user", "Some text."), ("assistant", "A reply.")], system="Be kind.", task=task)
    else:  # textbook and code documents are text after the tag, all of it trained on
        return f"{textformat.TAGS[task]} Some text."
    return "".join(text for text, trained in example[:[t for _, t in example].index(True)])


@pytest.mark.parametrize("tag", ["Textbook", "code", "[Math]", "LOGIC", "Roleplay", "excerpt", "Chat"])
def test_tags_render_as_training_examples_begin(tag):
    task = textformat.task_of(tag)
    want = training_prompt(task)
    got = textformat.render_text(sample.render_prompt(tag, "Some text.", system="Be kind."))
    assert got == want.rstrip(" ")  # the answer's leading space is the answer's first token, not the prompt's


def test_roleplay_names_render_through_chat():
    segs = sample.render_prompt("roleplay", "Hi!", user_name="Kazuma", bot_name="Aqua")
    assert textformat.render_text(segs) == "[Roleplay]\nKazuma: Hi!\nAqua:"


def test_parse_stops():
    assert sample.parse_stops(None) == []
    assert sample.parse_stops("\\n\\n") == ["\n\n"]
    assert sample.parse_stops(["END", "a\\tb"]) == ["END", "a\tb"]
    with pytest.raises(ValueError, match="--stop"):
        sample.parse_stops(["ok", 3])


def test_stop_strings_cut_completion(tiny_model):
    ids = encode("Once upon a time")
    full, reason = Engine(tiny_model).complete(ids, 30, temperature=0)
    assert reason == "length" and len(full) > 20
    stop = full[10:14]
    first = full.find(stop)
    text, reason = Engine(tiny_model).complete(ids, 30, stops=[stop, "never-appears"], temperature=0)
    assert reason == "stop"
    assert text == full[:first]


def test_stops_at_eot(tiny_model):
    # make <|endoftext|> score 10x the token greedy decoding picks third: generation must stop there
    ids = encode("Hi")
    base = tiny_model.generate(torch.tensor([ids]), 6, temperature=0)[0, len(ids):].tolist()
    with torch.no_grad():
        old = tiny_model.lm_head.weight[EOT_ID].clone()
        tiny_model.lm_head.weight[EOT_ID] = 10 * tiny_model.lm_head.weight[base[2]]
    try:
        text, reason = Engine(tiny_model).complete(ids, 30, temperature=0)
    finally:
        with torch.no_grad():
            tiny_model.lm_head.weight[EOT_ID] = old
    assert reason == "eot"
    assert text in [decode(base[:j]) for j in range(3)]


# ------------------------------------------------------------------ streaming

def test_stream_never_splits_utf8():
    text = "héllo wörld 🙂 日本語のテキスト 🤖✨ end"
    ids = encode(text)
    naive = [decode([i]) for i in ids]
    assert any("\ufffd" in p for p in naive)  # single tokens do cut characters: the test can fail
    ts = textformat.TextStream()
    pieces = [ts.add(i) for i in ids] + [ts.close()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text


def test_stream_holds_back_stop_prefix():
    stop = "\n[Human]:"
    text = "Sure, 🙂 here it is.\n[Human]: next question"
    ts = textformat.TextStream([stop])
    pieces = []
    for i in encode(text):
        pieces.append(ts.add(i))
        assert "\n[" not in "".join(pieces)  # nothing of the stop string is ever released
        if ts.finish:
            break
    pieces.append(ts.close())
    assert ts.finish == "stop" and "".join(pieces) == "Sure, 🙂 here it is."


def test_stream_invalid_bytes_replaced_once():
    enc = get_tokenizer()
    bad = [i for i in range(256) if enc.decode_bytes([i]) == b"\xff"]
    ts = textformat.TextStream()
    out = "".join(ts.add(i) for i in encode("a") + bad + encode("b")) + ts.close()
    assert out == "a\ufffdb"


# ------------------------------------------------------------------ repetition controls

def test_repetition_controls_prevent_repeats(tiny_model):
    ids = encode("Hello world")
    x = torch.tensor([ids])
    base = tiny_model.generate(x, 30, temperature=0)[0, len(ids):].tolist()
    assert len(set(base)) < len(base)  # the random model loops when left alone

    y = tiny_model.generate(x, 30, temperature=0, no_repeat_ngram_size=2)[0].tolist()
    bigrams = list(zip(y, y[1:]))
    assert len(bigrams) == len(set(bigrams))

    y = tiny_model.generate(x, 30, temperature=0, repetition_penalty=1e6)[0].tolist()
    assert len(set(y)) == len(y)  # no token of the context comes back

    # the same controls through sample.complete
    text, _ = Engine(tiny_model).complete(ids, 30, temperature=0, no_repeat_ngram_size=2)
    assert text == decode(tiny_model.generate(x, 30, temperature=0, no_repeat_ngram_size=2)[0, len(ids):].tolist())


def test_sampling_args_validated():
    args = sample.sampling_args(0.0, 0, 1.0, 1.0, 0)
    assert args["top_k"] is None and args["top_p"] is None
    for bad in [(-0.1, 0, 1.0, 1.0, 0), (1.0, -1, 1.0, 1.0, 0), (1.0, 0, 0.0, 1.0, 0), (1.0, 0, 1.0, 0.0, 0),
                (1.0, 0, 1.0, 1.0, -2)]:
        with pytest.raises(ValueError):
            sample.sampling_args(*bad)


# ------------------------------------------------------------------ chat history

def test_trim_chat_drops_oldest_keeps_current():
    turns = [("user", "first question " * 5), ("assistant", "first answer " * 5),
             ("user", "second"), ("assistant", "second answer"), ("user", "current message")]
    full = len(textformat.encode_prompt(textformat.chat(turns, system="S")))
    kept, dropped = textformat.trim_chat(turns, full, system="S")
    assert dropped == 0 and kept == turns
    kept, dropped = textformat.trim_chat(turns, full - 1, system="S")
    assert dropped == 2 and kept == turns[2:]  # a whole exchange goes; history starts on a user turn
    assert len(textformat.encode_prompt(textformat.chat(kept, system="S"))) <= full - 1
    alone = len(textformat.encode_prompt(textformat.chat(turns[-1:], system="S")))
    kept, dropped = textformat.trim_chat(turns, alone, system="S")
    assert kept == turns[-1:] and dropped == 4
    with pytest.raises(ValueError, match=f"needs {alone} tokens"):
        textformat.trim_chat(turns, alone - 1, system="S")


def test_chat_context_trimming(tiny_model):
    block = tiny_model.config.block_size  # 128
    conv = sample.Chat(tiny_model, max_new_tokens=40, system="Be brief.", sampling=dict(temperature=0))
    for i in range(7):
        ids, dropped = conv.prompt_ids(f"message number {i} with some words")
        assert len(ids) + 40 <= block
        rendered = decode(ids)
        assert rendered.startswith("[Chat]\n[System]: Be brief.")  # the system line always stays
        assert rendered.endswith(f"[Human]: message number {i} with some words\n[Bot]:")  # current turn whole
        reply, dropped2 = conv.reply(f"message number {i} with some words")
        assert dropped2 == dropped
        assert "[Human]:" not in reply and "[Bot]:" not in reply
    assert dropped > 0  # the history outgrew the context and was trimmed
    assert len(conv.turns) == 14  # ... but is kept whole for /save
    with pytest.raises(ValueError, match="current message needs"):
        conv.prompt_ids("word " * 200)
    assert len(conv.turns) == 14


def test_chat_rejects_unknown_style(tiny_model):
    with pytest.raises(ValueError, match="unknown chat style 'irc'"):
        sample.Chat(tiny_model, 10, style="irc")
    with pytest.raises(ValueError, match="needs a path"):
        sample.read_start("FILE:")


@pytest.mark.slow
def test_chat_fits_its_reply_budget_to_the_context(tiny_out_dir, tiny_model, capsys):
    # the README's piped chat on a checkpoint whose context equals max_new_tokens (issue 12)
    conv = sample.Chat(tiny_model, 128)  # block_size 128
    assert conv.max_new_tokens == 64 and "replies get at most 64 tokens" in capsys.readouterr().err
    ids, _ = conv.prompt_ids("hi")
    assert len(ids) + conv.max_new_tokens <= 128
    r = run([f"--out_dir={tiny_out_dir}", "--chat=True", "--max_new_tokens=256", "--temperature=0"],
            stdin="hello\n")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 1 and "at most 64 tokens" in r.stderr


@pytest.mark.slow
def test_chat_with_stdin_closed_is_a_clear_error(tiny_out_dir):
    r = subprocess.run(f"{sys.executable} sample.py --out_dir={tiny_out_dir} --chat=True <&-", shell=True,
                       capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=120)
    assert r.returncode == 2 and "stdin, which is closed" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_chat_reply_cut_at_speaker_marker(tiny_model):
    conv = sample.Chat(tiny_model, max_new_tokens=30, sampling=dict(temperature=0))
    ids, _ = conv.prompt_ids("hello")
    full, _ = Engine(tiny_model).complete(ids, 30, temperature=0)
    # pretend the model starts a new speaker turn: a stop string found in its greedy output
    marker = full[8:12]
    conv.stops.append(marker)
    reply, _ = conv.reply("hello")
    assert reply == full[:full.find(marker)].strip()


@pytest.mark.slow
def test_lora_adapter_dir_as_init_from(tiny_hf_dir, tmp_path):
    from nanophi import lora
    from nanophi.checkpoint import load_model, weights_sha256
    from model import GPT

    def greedy(model, prompt, n=20):
        ids = encode(prompt)
        out = model.generate(torch.tensor([ids]), n, temperature=0, stop_ids=[EOT_ID])[0, len(ids):].tolist()
        return decode(out).split("<|endoftext|>")[0]

    base = GPT.from_pretrained(tiny_hf_dir).eval()
    base_text = greedy(base, "The quick brown fox")
    base_sha256 = weights_sha256(base)
    peft_model = lora.wrap(base, 4, 8, 0.0, lora.DEFAULT_TARGETS)
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:  # peft starts B at zero (a no-op adapter): make it change the model
                p.normal_(0, 0.5)
    adir = lora.save_adapter(peft_model, str(tmp_path / "adapter"), tiny_hf_dir, {"block_size": 128}, base_sha256)
    want = greedy(load_model(adir)[0], "The quick brown fox")
    assert want != base_text  # the adapter really changes the model
    r = run([f"--init_from={adir}", "--temperature=0", "--start=The quick brown fox", "--max_new_tokens=20"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == want + "\n"


def test_chat_undo_and_load(tiny_model, tmp_path):
    conv = sample.Chat(tiny_model, 10)
    conv.turns = [("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d")]
    assert conv.undo() == 2 and conv.turns == [("user", "a"), ("assistant", "b")]
    conv.turns.append(("user", "unanswered"))
    assert conv.undo() == 1 and conv.turns == [("user", "a"), ("assistant", "b")]
    saved = conv.to_json()
    other = sample.Chat(tiny_model, 10)
    other.load(json.loads(json.dumps(saved)), "chat.json")
    assert other.turns == conv.turns
    with pytest.raises(ValueError, match="chat.json: turn 0: role must be"):
        other.load({"turns": [{"role": "narrator", "content": "x"}]}, "chat.json")
    with pytest.raises(ValueError, match="'turns' list"):
        other.load([], "chat.json")
    assert other.turns == conv.turns  # a bad file changes nothing


def test_chat_loop_stream_prints_what_is_kept(tiny_model):
    import io
    script = "hi\n\nwhat is this?\n/undo\nand now?\n"
    outs, turns = [], []
    for stream in (False, True):
        conv = sample.Chat(tiny_model, 25, sampling=dict(temperature=0))
        out = io.StringIO()
        sample.chat_loop(conv, io.StringIO(script), out, stream=stream)
        outs.append(out.getvalue())
        turns.append(conv.turns)
    assert outs[0] == outs[1]
    assert turns[0] == turns[1] and [t for r, t in turns[0] if r == "user"] == ["hi", "and now?"]
    lines = outs[0].splitlines()
    assert len(lines) == 3  # one line per message (the blank line is ignored), even the undone one
    assert lines[0] == turns[0][1][1] and lines[2] == turns[0][3][1]  # printed == kept in the history


@pytest.mark.slow
def test_chat_at_a_terminal_has_line_editing_and_history(tiny_out_dir, tmp_path):
    # a real pseudo-terminal: Up recalls the last message and Left edits it (readline), rather than
    # sending the escape sequence ^[[A as the message
    import pty
    import select
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "sample.py", f"--out_dir={tiny_out_dir}", "--chat=True",
                          "--max_new_tokens=4", "--temperature=0"], stdin=slave, stdout=slave,
                         stderr=subprocess.PIPE, cwd=ROOT, env={**ENV, "TERM": "xterm"})
    os.close(slave)
    seen = b""

    def until(needle, count):
        nonlocal seen
        while seen.count(needle) < count:
            ready, _, _ = select.select([master], [], [], 60)
            assert ready, f"no {needle!r} from the chat; got {seen[-300:]!r}"
            seen += os.read(master, 4096)

    saved = tmp_path / "chat.json"
    try:
        until(b"> ", 1)
        os.write(master, b"hello\r")
        until(b"> ", 2)
        os.write(master, b"\x1b[A\r")  # Up, Enter: the same message again
        until(b"> ", 3)
        os.write(master, b"\x1b[A\x1b[D\x1b[DX\r")  # Up, Left, Left, type X: 'helXlo'
        until(b"> ", 4)
        os.write(master, f"/save {saved}\r".encode())
        until(b"> ", 5)
        os.write(master, b"\x04")  # Ctrl-D: end of input
        p.wait(60)
    finally:
        if p.poll() is None:
            p.kill()
        os.close(master)
    assert p.returncode == 0, p.stderr.read().decode()
    users = [t["content"] for t in json.loads(saved.read_text())["turns"] if t["role"] == "user"]
    assert users == ["hello", "hello", "helXlo"]


def test_chat_keeps_the_cache_between_turns(tiny_model):
    conv = sample.Chat(tiny_model, 8, sampling=dict(temperature=0))
    fresh = sample.Chat(tiny_model, 8, sampling=dict(temperature=0))
    for i, msg in enumerate(["hello there", "and how are you?", "tell me more"]):
        ids, _ = conv.prompt_ids(msg)
        before = conv.engine.reused
        reply, _ = conv.reply(msg)
        if i:  # the previous turn's prompt is not computed again: only the new turn is prefilled
            assert conv.engine.reused - before >= last
        last = len(ids)
        fresh.turns = conv.turns[:-2]
        fresh.engine = sample.Engine(tiny_model, max_batch=1)  # no cache: the same reply
        assert fresh.reply(msg)[0] == reply


# ------------------------------------------------------------------ first-run messages (issue 22)

def test_an_empty_greedy_reply_says_why(tiny_model, capsys):
    conv = sample.Chat(tiny_model, max_new_tokens=8, sampling=dict(temperature=0))
    ids, _ = conv.prompt_ids("hello")
    first, _ = Engine(tiny_model).complete(ids, 1, temperature=0)
    conv.stops.append(first)  # the model's first piece of text ends the reply: nothing is left of it
    out = io.StringIO()
    sample.chat_reply(conv, "hello", out, stream=False)
    assert out.getvalue() == "\n"
    err = capsys.readouterr().err
    assert "empty reply: the model ended its turn at once" in err and "--temperature" in err


@pytest.mark.slow
def test_default_max_new_tokens_fits_the_context(tiny_out_dir):
    r = run([f"--out_dir={tiny_out_dir}", "--temperature=0", "--start=Once upon a time"])  # block_size 128
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr  # the default 256 is cut to what the context leaves
    r = run([f"--out_dir={tiny_out_dir}", "--temperature=0", "--start=Once upon a time", "--max_new_tokens=200"])
    assert r.returncode == 0 and "warning: prompt (4 tokens) + max_new_tokens (200) > block_size 128" in r.stderr


@pytest.mark.slow
def test_float16_on_cpu_is_an_inference_message(tiny_out_dir):
    r = run([f"--out_dir={tiny_out_dir}", "--dtype=float16", "--device=cpu"])
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: dtype=float16")
    assert "training" not in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_a_training_folder_as_init_from_names_its_best_pt(tiny_out_dir):
    from nanophi.checkpoint import load_for_inference
    with pytest.raises(ValueError) as e:
        load_for_inference(tiny_out_dir, "out", device="cpu")
    best = os.path.join(tiny_out_dir, "best.pt")
    assert str(e.value) == (f"init_from={tiny_out_dir!r} is a training folder; load its checkpoint with "
                            f"--init_from={best} (or --out_dir={tiny_out_dir})")
    r = run([f"--init_from={tiny_out_dir}"])
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == f"error: {e.value}"
    assert load_for_inference(best, "out", device="cpu").source == best
