"""
Sample from a NanoPhi model (or any GPT-2): prompts in the exact training format, completions
that stop, streaming, and an interactive chat with history.

    python sample.py --tag=Math --start="What is 12*7?" --temperature=0
    python sample.py --init_from=gpt2 --start=FILE:prompt.txt --num_samples=3 --stop="'\\n\\n'"
    python sample.py --chat --system="You are a patient tutor." --stream=True

Settings are plain globals below; override them with config files or --key=value (configurator.py).
stdout carries only the generated text (and the prompt with --echo); everything else goes to stderr,
so `python sample.py ... > out.txt` and piped chats are scriptable.
"""
import contextlib
import importlib
import json
import sys

import torch

from configurator import at_least, configure, one_of, run_main
from nanophi import textformat
from nanophi.checkpoint import default_out_dir, load_for_inference
from nanophi.datafiles import write_text_atomic
from nanophi.engine import Engine
from nanophi.tasks import CHAT_TASKS
from nanophi.tokenizer import EOT_ID, EOT_TEXT

# -----------------------------------------------------------------------------
init_from = 'resume'  # 'resume' (out_dir), a .pt file, gpt2 .. gpt2-xl, a transformers dir, a LoRA adapter dir
out_dir = default_out_dir()  # used by init_from='resume'; default: out/ if it holds a checkpoint, else the newest trained out*/
which = 'best'  # resume from out_dir's 'best' (lowest val loss) or 'latest' checkpoint
block_size = None  # None: the checkpoint's context length; a number crops or grows it (model.resize_block_size)
start = "\n"  # prompt text, or FILE:path to read it from a file
tag = ''  # task tag: Textbook, Code, Math, Logic, Roleplay, Excerpt, Chat ('' = raw text)
num_samples = 1  # completions to draw
max_new_tokens = 256  # new tokens per completion (per reply in chat)
temperature = 0.8  # 0 = greedy; < 1 sharper, > 1 more random
top_k = 200  # keep the k most likely tokens (0 = off)
top_p = 1.0  # nucleus sampling: keep the smallest set with this much probability (1.0 = off)
repetition_penalty = 1.0  # > 1 discourages tokens already in the context (CTRL); 1.0 = off
no_repeat_ngram_size = 0  # n > 0 forbids repeating any n-gram of the context
stop = None  # a string or a list of strings that end a completion ('\n' and '\t' escapes understood)
echo = False  # print the prompt before the completion
stream = False  # print text as it is generated
chat = False  # interactive chat on stdin (type /help)
chat_style = 'nanophi'  # speaker markers: nanophi ([Human]:/[Bot]:), plain (User:/Assistant:), metharme
system = ''  # system or persona line for chat and the chat/roleplay tags
user_name = ''  # roleplay: the user's name instead of the style's marker
bot_name = ''  # roleplay: the bot's name ('Aqua' -> 'Aqua:')
seed = 1337
device = 'auto'  # 'cpu', 'cuda', 'cuda:1', 'mps', or auto
dtype = 'auto'  # 'float32', 'bfloat16', 'float16', or auto (device.pick_dtype)
weights = 'auto'  # fp32 | bf16 (CPUs with avx512_bf16/amx) | int8 (CPU) | auto: bf16 with dtype=bfloat16 on CPU, else fp32
compile = False  # torch.compile each block's MLP (worth it on GPUs; the first call takes a while)
# -----------------------------------------------------------------------------
CHECKS = {  # checked once every config file and --key=value is in (configurator.py)
    "which": one_of("best", "latest"), "block_size": at_least(1), "max_new_tokens": at_least(1),
    "num_samples": at_least(1), "chat_style": one_of(*textformat.CHAT_STYLES),
    "dtype": one_of("auto", "float32", "bfloat16", "float16"),
}


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def read_start(start):
    """--start value -> prompt text; 'FILE:path' reads the file."""
    if start.startswith("FILE:"):
        path = start[len("FILE:"):]
        if not path:
            raise ValueError("--start=FILE: needs a path after 'FILE:'")
        try:
            with open(path, "r", encoding="utf-8") as f:
                return f.read()
        except OSError as e:
            raise ValueError(f"--start=FILE:{path}: cannot read the prompt file ({e.strerror})") from None
    return start


def parse_stops(stop):
    """--stop value (None, a string or a list of strings) -> list of strings, escapes decoded."""
    if stop is None or stop == "":
        return []
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) and s for s in items):
        raise ValueError(f"--stop must be a non-empty string or a list of them, got {stop!r}")
    unescape = {"\\n": "\n", "\\t": "\t", "\\\\": "\\"}
    out = []
    for s in items:
        res, i = "", 0
        while i < len(s):
            if s[i:i + 2] in unescape:
                res, i = res + unescape[s[i:i + 2]], i + 2
            else:
                res, i = res + s[i], i + 1
        out.append(res)
    return out


def render_prompt(tag, text, system=None, style="nanophi", user_name=None, bot_name=None):
    """Segments of the prompt: raw text without a tag, else exactly what training put before the answer."""
    if not tag:
        return [(text, False)]
    task = textformat.task_of(tag)
    if task in CHAT_TASKS and (user_name or bot_name):
        return textformat.chat([("user", text)], system=system, task=task, style=style, user_name=user_name,
                       bot_name=bot_name)
    return textformat.prompt_for(task, text, system=system, style=style)


def sampling_args(temperature, top_k, top_p, repetition_penalty, no_repeat_ngram_size):
    """Checked sampling settings for engine.Row."""
    if temperature < 0:
        raise ValueError(f"--temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 0:
        raise ValueError(f"--top_k must be >= 0 (0 = off), got {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"--top_p must be in (0, 1], got {top_p}")
    if repetition_penalty <= 0:
        raise ValueError(f"--repetition_penalty must be > 0 (1.0 = off), got {repetition_penalty}")
    if no_repeat_ngram_size < 0:
        raise ValueError(f"--no_repeat_ngram_size must be >= 0 (0 = off), got {no_repeat_ngram_size}")
    return dict(temperature=temperature, top_k=top_k or None, top_p=top_p if top_p < 1 else None,
                repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size)


# ---------------------------------------------------------------------------------------------
# chat

CHAT_HELP = """commands:
  /reset        forget the conversation
  /undo         take back your last message and the reply
  /save FILE    write the conversation as JSON
  /load FILE    continue a conversation saved with /save
  /system TEXT  set the system/persona line (/system alone clears it)
  /help         this text
  /quit         end (as does end of input)"""


class Chat:
    """A conversation rendered in the training chat format, trimmed to fit the context. Its engine keeps
    the KV cache between turns: a reply prefills only what is new since the last one."""

    def __init__(self, model, max_new_tokens, task="chat", style="nanophi", system=None, user_name=None,
                 bot_name=None, stops=(), generator=None, sampling=None):
        block = model.config.block_size
        if max_new_tokens > block // 2:  # a reply budget that leaves the history no room: fit it
            log(f"note: max_new_tokens={max_new_tokens} leaves too little room for the conversation in "
                f"block_size {block}; replies get at most {block // 2} tokens")
            max_new_tokens = block // 2
        self.model, self.max_new_tokens = model, max_new_tokens
        self.engine = Engine(model, max_batch=1, cache_slots=1)
        self.task, self.style, self.system = textformat.task_of(task), style, system or None
        self.user_name, self.bot_name = user_name or None, bot_name or None
        # the next speaker's marker, and <|endoftext|> written out as text (as old datasets did)
        self.stops = textformat.stop_strings(style, self.user_name, self.bot_name) + [EOT_TEXT] + list(stops)
        self.generator, self.sampling = generator, dict(sampling or {})
        self.turns = []  # [(role, text)], the whole conversation (the prompt may use only its end)

    def prompt_ids(self, message):
        """Token ids for history + message, oldest turns dropped to leave max_new_tokens of room."""
        budget = self.model.config.block_size - self.max_new_tokens
        kept, dropped = textformat.trim_chat(self.turns + [("user", message)], budget, self.system, self.task,
                                     self.style, self.user_name, self.bot_name)
        segs = textformat.chat(kept, self.system, self.task, self.style, self.user_name, self.bot_name)
        return textformat.encode_prompt(segs), dropped

    def reply(self, message, on_text=None):
        """Answer a user message; the exchange joins the history. Returns (reply, dropped turns)."""
        ids, dropped = self.prompt_ids(message)
        text, _ = self.engine.complete(ids, self.max_new_tokens, on_text, stops=self.stops,
                                       generator=self.generator, **self.sampling)
        reply = textformat.cut_reply(text, self.style, self.user_name, self.bot_name)
        self.turns += [("user", message.strip()), ("assistant", reply)]
        return reply, dropped

    def undo(self):
        """Take back the last user message and whatever followed it; returns the turns removed."""
        n = 0
        while self.turns:
            n += 1
            if self.turns.pop()[0] == "user":
                break
        return n

    def to_json(self):
        return {"task": self.task, "style": self.style, "system": self.system, "user_name": self.user_name,
                "bot_name": self.bot_name, "turns": [{"role": r, "content": t} for r, t in self.turns]}

    def load(self, obj, where):
        if not isinstance(obj, dict) or not isinstance(obj.get("turns"), list):
            raise ValueError(f"{where}: expected a JSON object with a 'turns' list (as /save writes)")
        try:
            turns = textformat._roles(obj["turns"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{where}: {e}") from None
        self.turns = turns
        if obj.get("system") is not None:
            self.system = obj["system"]


def read_line(inp, out, interactive):
    """The next input line ('' at end of input). At a terminal, input() gives readline's line editing
    and history (Up recalls an earlier message)."""
    if not interactive:
        return inp.readline()
    if inp is sys.stdin and out is sys.stdout:
        try:
            return input("> ") + "\n"
        except EOFError:
            return ""
    out.write("> ")
    out.flush()
    return inp.readline()


def chat_command(conv, line):
    """Run a /command; False for /quit."""
    cmd, _, arg = line.partition(" ")
    arg = arg.strip()
    if cmd in ("/quit", "/exit"):
        return False
    elif cmd == "/help":
        log(CHAT_HELP)
    elif cmd == "/reset":
        conv.turns = []
        log("(conversation reset)")
    elif cmd == "/undo":
        log(f"(removed {conv.undo()} turns)" if conv.turns else "(nothing to undo)")
    elif cmd == "/system":
        conv.system = arg or None
        log(f"(system line {'set' if arg else 'cleared'})")
    elif cmd in ("/save", "/load") and not arg:
        log(f"error: {cmd} needs a file name, e.g. {cmd} chat.json")
    elif cmd == "/save":
        try:
            write_text_atomic(arg, json.dumps(conv.to_json(), indent=2, ensure_ascii=False) + "\n")
            log(f"(saved {len(conv.turns)} turns to {arg})")
        except OSError as e:
            log(f"error: /save {arg}: {e.strerror}")
    elif cmd == "/load":
        try:
            with open(arg, encoding="utf-8") as f:
                conv.load(json.load(f), arg)
            log(f"(loaded {len(conv.turns)} turns from {arg})")
        except OSError as e:
            log(f"error: /load {arg}: {e.strerror}")
        except (ValueError, json.JSONDecodeError) as e:
            log(f"error: /load {arg}: {e}")
    else:
        log(f"error: unknown command {cmd!r}\n{CHAT_HELP}")
    return True


def chat_reply(conv, line, out, stream):
    """Answer one message on out; the exchange joins the history."""
    try:
        if stream:
            held = [None]  # whitespace not shown yet: None before the reply's first character

            def show(piece):
                # print what cut_reply will keep: no leading space, no trailing whitespace
                text = piece.lstrip() if held[0] is None else held[0] + piece
                if not text:
                    return
                body = text.rstrip()
                held[0] = text[len(body):]
                out.write(body)
                out.flush()
            reply, dropped = conv.reply(line, show)
            out.write("\n")
        else:
            reply, dropped = conv.reply(line)
            out.write(reply + "\n")
        out.flush()
    except ValueError as e:  # the message alone does not fit the context: say so, keep going
        log(f"error: {e}")
        return
    except KeyboardInterrupt:  # Ctrl-C stops the reply, not the chat; the exchange is dropped
        out.write("\n")
        log("(reply interrupted; not kept)")
        return
    if not reply.strip():  # say why the line is blank
        again = "; greedy decoding gives the same for the same history (try --temperature=0.8)" \
            if not conv.sampling.get("temperature") else ""
        log(f"(empty reply: the model ended its turn at once{again})")
    if dropped:
        log(f"(context full: the {dropped} oldest turns were left out of the prompt)")


def chat_loop(conv, inp, out, stream=False):
    """Read messages and commands from inp (a terminal or a pipe) until /quit or end of input."""
    interactive = inp.isatty()
    if interactive:
        try:
            importlib.import_module("readline")  # loading it gives input() line editing and history
        except ImportError:  # not on every platform (Windows)
            pass
        log("chat: type a message, /help for commands")
    while True:
        line = read_line(inp, out, interactive)
        if not line:  # end of input
            break
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            if not chat_command(conv, line):
                break
            continue
        chat_reply(conv, line, out, stream)


# ---------------------------------------------------------------------------------------------

def main(argv=None):
    global max_new_tokens
    sources = {}  # the settings a config file or an argument set
    with contextlib.redirect_stdout(sys.stderr):  # stdout is for generated text only
        configure(globals(), argv, sources=sources)
    sampling = sampling_args(temperature, top_k, top_p, repetition_penalty, no_repeat_ngram_size)
    stops = parse_stops(stop)
    if tag:
        textformat.task_of(tag)  # unknown tag: fail before loading the model
    text = None if chat else read_start(start)
    if chat and sys.stdin is None:  # started with stdin closed (e.g. `<&-`): there is nothing to read
        raise ValueError("--chat reads messages from stdin, which is closed; pipe them in or run it in a terminal")

    torch.manual_seed(seed)
    run = load_for_inference(init_from, out_dir, device, dtype, weights, which, block_size)
    model, autocast_ctx = run.model, run.autocast
    generator = torch.Generator(device=run.device).manual_seed(seed)
    log(f"loaded {run.source}: {run.n_params / 1e6:.2f}M parameters, block_size {model.config.block_size}, "
        f"{run.device} {run.dtype}, {run.weights} weights")
    if compile:  # the MLPs only: the KV cache's moving position would recompile a whole-forward graph every step
        for block in model.transformer.h:
            block.mlp = torch.compile(block.mlp, dynamic=True)

    if chat:
        conv = Chat(model, max_new_tokens, task=tag or "chat", style=chat_style, system=system,
                    user_name=user_name, bot_name=bot_name, stops=stops, generator=generator, sampling=sampling)
        with autocast_ctx:
            chat_loop(conv, sys.stdin, sys.stdout, stream)
        return

    segs = render_prompt(tag, text, system or None, chat_style, user_name or None, bot_name or None)
    ids = textformat.encode_prompt(segs) or [EOT_ID]  # an empty prompt starts from <|endoftext|>, as GPT-2 did
    if tag and textformat.task_of(tag) in CHAT_TASKS:  # one reply, not the whole conversation
        stops = stops + textformat.stop_strings(chat_style, user_name or None, bot_name or None)
    block = model.config.block_size
    if "max_new_tokens" not in sources and len(ids) < block:  # the default fits what the context leaves
        max_new_tokens = min(max_new_tokens, block - len(ids))
    if len(ids) > block:
        log(f"warning: the prompt has {len(ids)} tokens, more than block_size {block}; only its last {block // 2} are used")
    elif len(ids) + max_new_tokens > block:
        log(f"warning: prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) > block_size {block}: "
            f"past it the model keeps only the last {block // 2} tokens of context")
    write = sys.stdout.write
    engine = Engine(model, max_batch=1)
    for _ in range(num_samples):
        if echo:
            write(textformat.render_text(segs))
        on_text = (lambda piece: (write(piece), sys.stdout.flush())) if stream else None
        with autocast_ctx:
            completion, _ = engine.complete(ids, max_new_tokens, on_text, stops=stops, generator=generator,
                                            **sampling)
        if not stream:
            write(completion)
        write("\n")
        if num_samples > 1:
            write("---------------\n")
        sys.stdout.flush()


if __name__ == "__main__":
    run_main(main, sys.argv[1:], errors=((ValueError, 2), (FileNotFoundError, 2)))
