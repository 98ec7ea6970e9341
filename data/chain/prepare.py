"""
[Logic] noun chains, the showcase's family (c), as a task of their own: plain text, every token
trained but each noun's first mention (showcase.chain_segments). Its own directory so that every training row of it starts at a chain and holds only
chains (a copy of a noun forms on such rows; rows that run on into yes/no questions hold it back:
docs/pipeline.md). Tagged [Logic]: the showcase prompts them as logic.

    python data/chain/prepare.py        # offline: 'If a fox digs a deep hole, and the hole is under a hill, the fox's hole must be under a hill'

The nouns come from showcase.training_nouns(); the held-out prompts' nouns never appear.
"""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
from nanophi import dataprep, showcase, textformat  # noqa: E402
from nanophi.records import Schema, Source, need  # noqa: E402

num_generated = 20000

SCHEMAS = [Schema("text", ["text"], lambda r: [textformat.plain("logic", need(r, "text"))])]


def chains(cfg):
    for i, it in enumerate(showcase.training_items("chain", cfg.num_generated, cfg.seed)):
        yield f"chain generator seed={cfg.seed} #{i}", it


def offline(cfg):
    return [Source("chain-generator", lambda: chains(cfg), Schema("generated", [], lambda r: [showcase.chain_segments(r)]))]


def main(argv=None):
    return dataprep.run("chain", SCHEMAS, offline, argv, render_task="logic",
                        meta_extra={"loss": "whole text but each noun's first mention"},
                        near_dedup=False, num_generated=num_generated)


if __name__ == "__main__":
    dataprep.cli(main)
