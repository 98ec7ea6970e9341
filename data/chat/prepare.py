"""
[Chat] data: assistant conversations (loss on the assistant's replies, each closed by <|endoftext|>).
Hand-written conversations are rendered in every chat style of textformat.CHAT_STYLES (nanophi
always), MiniSymposium-style, so any of those prompt formats works at inference.

    python data/chat/prepare.py                          # offline: data/chat/handwritten.jsonl
    python data/chat/prepare.py --source=hub             # PersonaChat (truecased + lowercase copies) + PygmalionAI/PIPPA
    python data/chat/prepare.py --source=convs.jsonl     # local file in any of those schemas

Hand-written schema: {"id", "system" (or null), "turns": [{"role": "user"|"assistant", "content"}, ...]}
"""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
from nanophi import dataprep, records  # noqa: E402
from nanophi import textformat  # noqa: E402
from nanophi.records import PARQUET_CONVERSION, FieldError, Hub, Schema, need  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
HANDWRITTEN = os.path.join(HERE, "handwritten.jsonl")
styles = list(textformat.CHAT_STYLES)


def handwritten(r, styles, task="chat"):
    turns = records.conversation(r)
    system = need(r, "system") if r.get("system") is not None else None
    return [textformat.chat(turns, system=system, task=task, style=s) for s in styles]


def strings(r, field):
    v = need(r, field, list)
    for i, s in enumerate(v):
        if not isinstance(s, str):
            raise FieldError(f"{field}[{i}]", f"expected str, got {type(s).__name__}")
    return v


def persona_system(r):
    return "Your persona: " + " ".join(p.strip() for p in strings(r, "personality"))


SILENCE = "__ SILENCE __"  # PersonaChat's stand-in for a partner who said nothing (the bot opens)


def persona_turns(history, reply):
    # the last history line is the partner's (user); roles alternate backwards from there
    n = len(history)
    turns = [{"role": "user" if (n - 1 - j) % 2 == 0 else "assistant", "content": h} for j, h in enumerate(history)]
    turns = [t for t in turns if "".join(t["content"].split()).upper() != SILENCE.replace(" ", "")]  # any case/spacing
    return turns + [{"role": "assistant", "content": reply}]


def personachat_truecased(r):
    # one row per reply: history so far + candidates, the last candidate is the gold reply.
    # Rows of a conversation are growing prefixes, so only the row's own reply is trained.
    history, cands = strings(r, "history"), strings(r, "candidates")
    turns = records.conversation({"turns": persona_turns(history, cands[-1])})
    return [records.only_last_reply_trained(textformat.chat(turns, system=persona_system(r)))]


def persona_chat(r):
    # one row per conversation: utterances[-1] holds the whole history and the final gold reply
    utts = need(r, "utterances", list)
    last = utts[-1]
    if not isinstance(last, dict):
        raise FieldError(f"utterances[{len(utts) - 1}]", f"expected an object, got {type(last).__name__}")
    try:
        history, cands = strings(last, "history"), strings(last, "candidates")
    except FieldError as e:
        raise FieldError(f"utterances[{len(utts) - 1}].{e.field}", e.problem) from None
    turns = records.conversation({"turns": persona_turns(history, cands[-1])})
    return [textformat.chat(turns, system=persona_system(r))]


def _load_roleplay():
    # PIPPA's field mapping lives in the roleplay script; chat reuses it (one definition)
    return records.load_prepare("roleplay")


roleplay = _load_roleplay()


def pippa(r):
    bot = need(r, "bot_name")
    return [textformat.chat(roleplay.pippa_turns(r), system=f"You are {bot}. " + roleplay.pippa_persona(r))]


def schemas(cfg_styles=None):
    return [
        Schema("handwritten", ["turns"], lambda r: handwritten(r, cfg_styles or styles)),
        # the truecased file its loading script reads: one JSON array of conversations, streamed (ijson).
        # The lowercase copy below holds the same dialogues: records.dedup_key makes them collide.
        Schema("bavard/personachat_truecased", ["personality", "utterances"], persona_chat,
               hub=Hub("bavard/personachat_truecased", "personachat_truecased_full_train.json", "json_array",
                       rows=17878, tokens_per_doc=330, bytes_per_doc=11000)),
        Schema("AlekseyKorshuk/persona-chat", ["personality", "utterances"], persona_chat,
               hub=Hub("AlekseyKorshuk/persona-chat", "default/train/*.parquet", "parquet", revision=PARQUET_CONVERSION,
                       rows=17878, tokens_per_doc=330, bytes_per_doc=3000, copy_of="bavard/personachat_truecased")),
        # rows as the old loading script gave them (one row per reply); local files only
        Schema("personachat-rows", ["personality", "history", "candidates"], personachat_truecased),
        Schema("PygmalionAI/PIPPA", ["bot_name", "bot_definitions", "conversation"], pippa, hub=roleplay.PIPPA),
    ]


SCHEMAS = schemas()


offline = records.handwritten_offline("chat", HANDWRITTEN, schemas)


def main(argv=None):
    return dataprep.run("chat", lambda cfg: schemas(records.chat_styles(cfg.styles)), offline, argv, styles=styles,
                        meta_extra={"loss": "assistant replies and their end-of-text only"})


if __name__ == "__main__":
    dataprep.cli(main)
