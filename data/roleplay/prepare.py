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
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
from nanophi import dataprep  # noqa: E402
from nanophi import textformat  # noqa: E402
from nanophi.dataprep import FieldError, Schema, need  # noqa: E402

HANDWRITTEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "handwritten.jsonl")
styles = list(textformat.CHAT_STYLES)


def handwritten(r, styles):
    turns = dataprep.conversation(r)
    bot, persona = need(r, "bot_name"), need(r, "persona")
    user = need(r, "user_name") if r.get("user_name") is not None else None
    return [textformat.chat(turns, system=persona, task="roleplay", style=s, user_name=user, bot_name=bot) for s in styles]


def pippa_turns(r):
    conv = need(r, "conversation", list)
    turns = []
    for i, m in enumerate(conv):
        if not isinstance(m, dict):
            raise FieldError(f"conversation[{i}]", f"expected an object, got {type(m).__name__}")
        try:
            text = need(m, "message")
            human = need(m, "is_human", bool)
        except FieldError as e:
            raise FieldError(f"conversation[{i}].{e.field}", e.problem) from None
        turns.append({"role": "user" if human else "assistant", "content": text})
    return dataprep.conversation({"turns": turns})


def pippa_persona(r, user="User"):
    bot = need(r, "bot_name")
    parts = [need(r, k, allow_empty=True) for k in ("bot_description", "bot_definitions") if r.get(k) is not None]
    persona = "\n".join(p.strip() for p in parts if p.strip()) or f"{bot}."
    return persona.replace("{{char}}", bot).replace("{{user}}", user)


def pippa(r):
    bot = need(r, "bot_name")
    return [textformat.chat(pippa_turns(r), system=pippa_persona(r), task="roleplay", bot_name=bot, user_name="User")]


def schemas(cfg_styles=None):
    return [
        Schema("handwritten", ["bot_name", "persona", "turns"], lambda r: handwritten(r, cfg_styles or styles)),
        Schema("PygmalionAI/PIPPA", ["bot_name", "bot_definitions", "conversation"], pippa, hub=("PygmalionAI/PIPPA", None)),
    ]


SCHEMAS = schemas()


offline = dataprep.handwritten_offline("roleplay", HANDWRITTEN, schemas)


def main(argv=None):
    return dataprep.run("roleplay", lambda cfg: schemas(dataprep.chat_styles(cfg.styles)), offline, argv, styles=styles,
                        meta_extra={"loss": "bot replies and their end-of-text only"})


if __name__ == "__main__":
    dataprep.cli(main)
