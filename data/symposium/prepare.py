"""
Symposium data (MiniSymposium-style): a few hundred hand-written conversations whose replies weigh
several perspectives before concluding, some correcting themselves. Rendered as [Chat] in every
chat style of textformat.CHAT_STYLES (nanophi always), loss on the replies only. Meant for the
low-LR, many-epoch (LoRA) finetune; a small, separately weighted task in the mixture.

    python data/symposium/prepare.py                        # data/symposium/handwritten.jsonl
    python data/symposium/prepare.py --source=mine.jsonl    # a local file in the same schema

Schema: {"id", "system" (or null), "turns": [{"role": "user"|"assistant", "content"}, ...]}
"""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
from nanophi import dataprep, records  # noqa: E402
from nanophi import textformat  # noqa: E402
from nanophi.records import Schema, need  # noqa: E402

HANDWRITTEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "handwritten.jsonl")
styles = list(textformat.CHAT_STYLES)


def handwritten(r, styles):
    turns = records.conversation(r)
    system = need(r, "system") if r.get("system") is not None else None
    return [textformat.chat(turns, system=system, task="chat", style=s) for s in styles]


def schemas(cfg_styles=None):
    return [Schema("handwritten", ["turns"], lambda r: handwritten(r, cfg_styles or styles))]


SCHEMAS = schemas()


offline = records.handwritten_offline("symposium", HANDWRITTEN, schemas)


def main(argv=None):
    return dataprep.run("symposium", lambda cfg: schemas(records.chat_styles(cfg.styles)), offline, argv,
                        render_task="chat", styles=styles,
                        meta_extra={"loss": "assistant replies and their end-of-text only"})


if __name__ == "__main__":
    dataprep.cli(main)
