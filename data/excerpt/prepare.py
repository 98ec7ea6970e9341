"""
[Excerpt] ... [Response] data: a passage and a question about it, answered from the passage
(loss on the response).

    python data/excerpt/prepare.py                      # offline: questions about Python documentation excerpts
    python data/excerpt/prepare.py --source=x.jsonl     # local {"text", "response"}
"""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
from nanophi import dataprep  # noqa: E402
from nanophi import offline_sources  # noqa: E402
from nanophi import textformat  # noqa: E402
from nanophi.records import Schema, Source, need  # noqa: E402

SCHEMAS = [
    Schema("excerpt", ["text", "response"], lambda r: [textformat.excerpt(need(r, "text"), need(r, "response"))]),
]


def offline(cfg):
    return [Source("python-docs-qa", lambda: offline_sources.excerpt_items(cfg.seed), SCHEMAS[0])]


def main(argv=None):
    return dataprep.run("excerpt", SCHEMAS, offline, argv,
                        meta_extra={"loss": "response only",
                                    "kinds": {"topic": "what the excerpt is about (its section title)",
                                              "definition": "a sentence of the excerpt that answers the question",
                                              "module": "which module a docstring documents"}})


if __name__ == "__main__":
    dataprep.cli(main)
