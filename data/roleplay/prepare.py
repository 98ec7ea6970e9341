"""
[Roleplay] data: in-character conversations, the bot speaking as a named persona (loss on its replies).
Each conversation is rendered in every chat style of textformat.CHAT_STYLES (nanophi always), so the
model answers in whichever prompt format it is given.

    python data/roleplay/prepare.py                       # offline: data/roleplay/handwritten.jsonl
    python data/roleplay/prepare.py --source=hub          # PygmalionAI/PIPPA
    python data/roleplay/prepare.py --source=chats.jsonl  # local file, PIPPA or hand-written schema

Hand-written schema: {"id", "bot_name", "persona", "user_name" (or null), "turns": [{"role", "content"}, ...]}
"""
import os
import re
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
from nanophi import dataprep, records  # noqa: E402
from nanophi import textformat  # noqa: E402
from nanophi.records import FieldError, Hub, Schema, need  # noqa: E402

HANDWRITTEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "handwritten.jsonl")
styles = list(textformat.CHAT_STYLES)


def handwritten(r, styles):
    turns = records.conversation(r)
    bot, persona = need(r, "bot_name"), need(r, "persona")
    user = need(r, "user_name") if r.get("user_name") is not None else None
    return [textformat.chat(turns, system=persona, task="roleplay", style=s, user_name=user, bot_name=bot) for s in styles]


# PIPPA's character definitions carry the site's placeholders: {{char}} (the bot), {{user}},
# {{random_user_1}}, {{u01}} (users in example dialogues) and END_OF_DIALOG between examples
USER_PLACEHOLDER = re.compile(r"\{\{\s*(?:user|random_user_\d+|u\d+)\s*\}\}", re.I)
CHAR_PLACEHOLDER = re.compile(r"\{\{\s*char\s*\}\}", re.I)


def pippa_clean(text, bot, user="User"):
    text = USER_PLACEHOLDER.sub(user, CHAR_PLACEHOLDER.sub(bot, text))
    return re.sub(r"[ \t]*END_OF_DIALOG[ \t]*\n?", "\n", text).strip()


def pippa_messages(r):
    """conversation as [{message, is_human}]: the JSONL files' shape, or the loading script's
    dict of lists {message: [...], is_human: [...]} (datasets' Sequence of a dict)."""
    conv = r.get("conversation")
    if isinstance(conv, dict):
        msgs, humans = need(conv, "message", list), need(conv, "is_human", list)
        if len(msgs) != len(humans):
            raise FieldError("conversation", f"{len(msgs)} messages but {len(humans)} is_human flags")
        return [{"message": m, "is_human": h} for m, h in zip(msgs, humans)]
    return need(r, "conversation", list)


def pippa_turns(r, user="User"):
    bot = need(r, "bot_name")
    turns = []
    for i, m in enumerate(pippa_messages(r)):
        if not isinstance(m, dict):
            raise FieldError(f"conversation[{i}]", f"expected an object, got {type(m).__name__}")
        try:
            text = need(m, "message")
            human = need(m, "is_human", bool)
        except FieldError as e:
            raise FieldError(f"conversation[{i}].{e.field}", e.problem) from None
        turns.append({"role": "user" if human else "assistant", "content": pippa_clean(text, bot, user)})
    return records.conversation({"turns": [t for t in turns if t["content"]]})


def pippa_persona(r, user="User"):
    bot = need(r, "bot_name")
    parts = [need(r, k, allow_empty=True) for k in ("bot_description", "bot_definitions") if r.get(k) is not None]
    persona = "\n".join(p.strip() for p in parts if p.strip()) or f"{bot}."
    return pippa_clean(persona, bot, user)


def pippa(r):
    bot = need(r, "bot_name")
    return [textformat.chat(pippa_turns(r), system=pippa_persona(r), task="roleplay", bot_name=bot, user_name="User")]


# the deduplicated JSON lines file its (no longer runnable) loading script downloads; timestamps are
# milliseconds and bot_definitions/categories are null in some rows, so the schema is given, not inferred
def pippa_features():
    from datasets import Features, Sequence, Value
    return Features({"submission_timestamp": Value("int64"), "categories": Sequence(Value("string")),
                     "bot_id": Value("string"), "bot_name": Value("string"), "bot_greeting": Value("string"),
                     "bot_definitions": Value("string"), "bot_description": Value("string"),
                     "conversation": [{"message": Value("string"), "is_human": Value("bool")}]})


PIPPA = Hub("PygmalionAI/PIPPA", "pippa_deduped.jsonl", "json", features=pippa_features, rows=16832, tokens_per_doc=3000,
           bytes_per_doc=12000, gated=True)


def schemas(cfg_styles=None):
    return [
        Schema("handwritten", ["bot_name", "persona", "turns"], lambda r: handwritten(r, cfg_styles or styles)),
        Schema("PygmalionAI/PIPPA", ["bot_name", "bot_definitions", "conversation"], pippa, hub=PIPPA),
    ]


SCHEMAS = schemas()


offline = records.handwritten_offline("roleplay", HANDWRITTEN, schemas)


def main(argv=None):
    return dataprep.run("roleplay", lambda cfg: schemas(records.chat_styles(cfg.styles)), offline, argv, styles=styles,
                        meta_extra={"loss": "bot replies and their end-of-text only"})


if __name__ == "__main__":
    dataprep.cli(main)
