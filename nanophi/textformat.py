"""
The training text format: task tags, chat markers, which tokens carry loss, and how generated
tokens turn back into text (TextStream: cut at end-of-text and stop strings).

Data preparation, training, sampling, serving and evaluation all render text through this file,
so a prompt at inference is token-for-token the prefix the model saw in training.

An example is a list of segments (text, trained). Each segment is tokenized on its own and the
ids are concatenated, so a prompt encoded at inference ends on exactly the same token boundary
as in training (no "trailing space becomes its own token" mismatch). A segment may also be a
raw token id (int): that is how <|endoftext|> (one id, 50256) closes each bot turn and example.

Tokens of trained segments get mask 1 (they are targets), prompt tokens get mask 0.
Textbooks and code are trained on whole; QA, excerpt/response, chat and roleplay only on the
answer/reply (and the end-of-text that closes it, so the model learns to stop).

    [Textbook] Photosynthesis is ...<|endoftext|>               all trained
    [Math] What is 12*7?\nAnswer:| 84<|endoftext|>               prompt | trained
    [Excerpt] ...\n[Response]| The passage says ...<|endoftext|>
    [Chat]\n[System]: ...\n[Human]: hi\n[Bot]:| Hello!<|endoftext|>\n[Human]: ...\n[Bot]:| ...<|endoftext|>
"""
import codecs

from nanophi.tasks import CHAT_TASKS, QA_TASKS, TAGS  # TAGS: task name -> tag starting each of its examples
from nanophi.tokenizer import EOT_ID, EOT_TEXT, decode, encode, get_tokenizer

RESPONSE = "[Response]"   # excerpt/response marker, as in NanoPhi's data
ANSWER = "Answer:"        # QA marker for math/logic; exact-match eval reads what follows it

# chat speaker markers; "nanophi" is the default the samplers and the server use, the others
# are the extra prompt formats the hand-written set is also rendered in (MiniSymposium-style)
CHAT_STYLES = {
    "nanophi": {"system": "[System]:", "user": "[Human]:", "bot": "[Bot]:"},
    "plain": {"system": "System:", "user": "User:", "bot": "Assistant:"},
    "metharme": {"system": "<|system|>", "user": "<|user|>", "bot": "<|model|>"},
}


def task_of(tag):
    """'Math', 'math' or '[Math]' -> 'math'; a clear error for anything else."""
    key = str(tag).strip().strip("[]").lower()
    if key not in TAGS:
        raise ValueError(f"unknown tag {tag!r}; known tags: {', '.join(t.strip('[]') for t in TAGS.values())}")
    return key


# ---------------------------------------------------------------------------------------------
# renderers: each returns a list of segments (text or token id, trained)

def plain(task, text):
    """Whole text trained: textbooks, code, few-shot chains like '[Math] 1+1=2 2+2=4'."""
    return [(f"{TAGS[task_of(task)]} {text.strip()}", True)]


def textbook(text):
    return plain("textbook", text)


def code(source, docstring=None):
    """CodeSearchNet-style: optional docstring comment, then the code; all trained."""
    source = source.strip("\n")
    text = f'"""{docstring.strip()}"""\n{source}' if docstring else source
    return [(f"{TAGS['code']} {text}", True)]


def code_exercise(prompt, body):
    """phi-1 CodeExercises-style: signature+docstring is the prompt, the body is trained."""
    prompt = prompt.rstrip() + "\n"
    return [(f"{TAGS['code']} {prompt}", False), (body.rstrip(), True)]


def qa(task, question, answer=None, tag=None):
    """'[Math] question\\nAnswer:' then ' answer'. answer=None gives the prompt only.
    tag overrides the task's tag (eval.py's tag comparison: tag='[asy]'; tag='' means no tag)."""
    head = TAGS[task_of(task)] if tag is None else tag.strip()
    segs = [(f"{head} {question.strip()}\n{ANSWER}" if head else f"{question.strip()}\n{ANSWER}", False)]
    if answer is not None:
        segs.append((" " + str(answer).strip(), True))
    return segs


def excerpt(text, response=None):
    """'[Excerpt] text\\n[Response]' then ' response'. response=None gives the prompt only."""
    segs = [(f"{TAGS['excerpt']} {text.strip()}\n{RESPONSE}", False)]
    if response is not None:
        segs.append((" " + response.strip(), True))
    return segs


def _roles(turns):
    """Accept [(role, text)] or OpenAI-style [{'role':..., 'content':...}]; roles user/assistant."""
    out = []
    for i, t in enumerate(turns):
        role, text = (t["role"], t["content"]) if isinstance(t, dict) else t
        role = {"human": "user", "bot": "assistant", "model": "assistant"}.get(role, role)
        if role not in ("user", "assistant"):
            raise ValueError(f"turn {i}: role must be 'user' or 'assistant', got {role!r}")
        if not isinstance(text, str):
            raise ValueError(f"turn {i}: content must be a string, got {type(text).__name__}")
        out.append((role, text.strip()))
    return out


def markers(style="nanophi", user_name=None, bot_name=None):
    """Speaker markers of a chat style; roleplay replaces them with names ('Aqua:')."""
    if style not in CHAT_STYLES:
        raise ValueError(f"unknown chat style {style!r}; known: {', '.join(CHAT_STYLES)}")
    m = dict(CHAT_STYLES[style])
    if user_name:
        m["user"] = f"{user_name}:"
    if bot_name:
        m["bot"] = f"{bot_name}:"
    return m


def chat(turns, system=None, task="chat", style="nanophi", user_name=None, bot_name=None):
    """
    A conversation. Bot turns are trained and each ends with <|endoftext|>; everything else is
    prompt. If the last turn is the user's, the result ends with the bot marker: a prompt.
    """
    m = markers(style, user_name, bot_name)
    turns = _roles(turns)
    head = TAGS[task_of(task)]
    if system:
        head += f"\n{m['system']} {system.strip()}"
    segs, pending = [], head
    for role, text in turns:
        if role == "user":
            pending += f"\n{m['user']} {text}"
        else:
            segs.append((pending + f"\n{m['bot']}", False))
            segs.append((" " + text, True))
            segs.append((EOT_ID, True))
            pending = ""
    if turns and turns[-1][0] == "user":
        segs.append((pending + f"\n{m['bot']}", False))
    elif pending:
        segs.append((pending, False))
    return segs


def chat_template(style="nanophi"):
    """
    chat() as a Jinja chat template for transformers (written into exported tokenizers), built
    from the same markers: apply_chat_template(messages, add_generation_prompt=True) renders
    exactly render_text(chat(turns, system)). A leading 'system' message is the system line.
    """
    m = markers(style)
    q = lambda s: "'" + s.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"
    return ("{{ " + q(TAGS["chat"]) + " }}"
            "{% for message in messages %}"
            "{% if message['role'] == 'system' %}{{ " + q("\n" + m["system"] + " ") + " + message['content'] | trim }}"
            "{% elif message['role'] == 'user' %}{{ " + q("\n" + m["user"] + " ") + " + message['content'] | trim }}"
            "{% else %}{{ " + q("\n" + m["bot"] + " ") + " + message['content'] | trim + " + q(EOT_TEXT) + " }}"
            "{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}{{ " + q("\n" + m["bot"]) + " }}{% endif %}")


def stop_strings(style="nanophi", user_name=None, bot_name=None):
    """Text that means the bot's reply is over: the next speaker marker on a new line."""
    m = markers(style, user_name, bot_name)
    return [f"\n{m['user']}", f"\n{m['bot']}", f"\n{m['system']}"]


def cut_reply(text, style="nanophi", user_name=None, bot_name=None):
    """Cut generated text at the first speaker marker (or end-of-text), strip whitespace."""
    cut = len(text)
    for s in stop_strings(style, user_name, bot_name) + ["<|endoftext|>"]:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut].strip()


# ---------------------------------------------------------------------------------------------
# encoding

def encode_segments(segments):
    """Segments -> (ids, mask) with no end-of-text added."""
    ids, mask = [], []
    for part, trained in segments:
        toks = [int(part)] if isinstance(part, int) else encode(part)
        ids.extend(toks)
        mask.extend([1 if trained else 0] * len(toks))
    return ids, mask


def encode_example(segments):
    """A training example: (ids, mask), always closed by the single end-of-text id (trained)."""
    ids, mask = encode_segments(segments)
    if not ids:
        raise ValueError("empty example")
    if ids[-1] != EOT_ID:
        ids.append(EOT_ID)
        mask.append(1)
    return ids, mask


def encode_prompt(segments):
    """A prompt for generation: the same tokens training put before the response."""
    return encode_segments(segments)[0]


def render_text(segments):
    """Human-readable text of segments (for logs, README examples, debugging)."""
    return "".join(decode([p]) if isinstance(p, int) else p for p, _ in segments)


def prompt_for(task, text, system=None, style="nanophi"):
    """
    The prompt a user means by `--tag=<task> --start=<text>`: QA tasks ask for the answer,
    excerpt asks for the response, chat/roleplay open a one-turn conversation, and textbook/code
    continue the tagged text.
    """
    task = task_of(task)
    if task in QA_TASKS:
        return qa(task, text)
    if task == "excerpt":
        return excerpt(text)
    if task in CHAT_TASKS:
        return chat([("user", text)], system=system, task=task, style=style)
    return [(f"{TAGS[task]} {text.strip()}", False)]


def trim_chat(turns, budget, system=None, task="chat", style="nanophi", user_name=None, bot_name=None):
    """
    Drop the oldest turns until the chat prompt encodes to at most `budget` tokens (callers pass
    block_size - max_new_tokens). The system line and the last turn (the current message) are
    always kept, and the kept history starts on a user turn. Returns (kept_turns, n_dropped);
    raises ValueError, with the token counts, when the current turn alone does not fit.
    """
    turns = list(turns)
    kept = turns
    while True:
        n = len(encode_prompt(chat(kept, system, task, style, user_name, bot_name)))
        if n <= budget:
            return kept, len(turns) - len(kept)
        if len(kept) <= 1:
            raise ValueError(f"the current message needs {n} tokens with the chat header, more than the "
                             f"{budget} tokens left for the prompt; shorten it (or the system line), or "
                             f"lower max_new_tokens")
        kept = kept[1:]
        while len(kept) > 1 and _roles(kept[:1])[0][0] == "assistant":  # history starts with a user turn
            kept = kept[1:]


# ---------------------------------------------------------------------------------------------
# generated text

class TextStream:
    """
    Generated token ids in, text out, for sample.py and serve.py alike: UTF-8 decoded
    incrementally (a character split over two tokens waits for its second half), cut before the
    first stop string, never handing out text that might turn out to be the start of a stop
    string; end-of-text finishes it (unless ignore_eos). strip=True strips chat replies of leading
    and trailing whitespace (as cut_reply does). add(token) -> new text; close() -> the rest;
    .finish is None, 'stop' or 'length'; .text is the whole text.
    """

    def __init__(self, stops=(), strip=False, ignore_eos=False):
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stops = [s for s in stops if s]  # an empty stop string would cut everything
        self.strip, self.ignore_eos = strip, ignore_eos
        self.longest = max((len(s) for s in self.stops), default=0)
        self.text, self.sent = "", 0  # decoded text, characters handed out
        self.finish = None

    def _cut(self, start):
        hits = [i for i in (self.text.find(s, start) for s in self.stops) if i != -1]
        if hits:
            self.text = self.text[:min(hits)]
            self.finish = "stop"

    def _held(self):
        """How many trailing characters could be the start of a stop string."""
        for k in range(min(self.longest - 1, len(self.text)), 0, -1):
            tail = self.text[-k:]
            if any(s.startswith(tail) for s in self.stops):
                return k
        return 0

    def _delta(self):
        visible = self.text if self.finish else self.text[:len(self.text) - self._held()]
        if self.strip:
            visible = visible.strip()
        out = visible[self.sent:]
        self.sent = len(visible)
        return out

    def add(self, token):
        """Take one generated token id; return the text that can now be handed out."""
        if self.finish:  # finished: later tokens are not part of the text
            return ""
        if token == EOT_ID and not self.ignore_eos:
            self.text += self.decoder.decode(b"", final=True)
            self.finish = "stop"
            self._cut(max(0, len(self.text) - self.longest))
            return self._delta()
        start = max(0, len(self.text) - self.longest + 1)
        self.text += self.decoder.decode(get_tokenizer().decode_single_token_bytes(token))
        self._cut(start)
        return self._delta()

    def close(self):
        """max_tokens reached: hand out what was held back."""
        start = max(0, len(self.text) - self.longest + 1)
        self.text += self.decoder.decode(b"", final=True)
        self._cut(start)
        if self.finish is None:
            self.finish = "length"
        return self._delta()
