"""
[Textbook] data: textbook-style prose, trained on whole.

    python data/textbook/prepare.py                       # offline: Python docs (python3.11-doc), pydoc topics, module docstrings
    python data/textbook/prepare.py --source=hub          # nampdn-ai/tiny-textbooks + SciPhi/textbooks-are-all-you-need-lite
    python data/textbook/prepare.py --source=books.jsonl  # a local file in one of those schemas (or .txt)
"""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
from nanophi import dataprep  # noqa: E402
from nanophi import offline_sources  # noqa: E402
from nanophi import textformat  # noqa: E402
from nanophi.records import PARQUET_CONVERSION, Hub, Schema, Source, need  # noqa: E402

SCHEMAS = [
    # both read from the hub's parquet conversion; tiny-textbooks may be gated (accept its terms, log in)
    Schema("nampdn-ai/tiny-textbooks", ["textbook"], lambda r: [textformat.textbook(need(r, "textbook"))],
           hub=Hub("nampdn-ai/tiny-textbooks", "default/train/*.parquet", "parquet", revision=PARQUET_CONVERSION,
                   rows=420000, tokens_per_doc=800, bytes_per_doc=4500, gated=True)),
    Schema("SciPhi/textbooks-are-all-you-need-lite", ["completion"], lambda r: [textformat.textbook(need(r, "completion"))],
           hub=Hub("SciPhi/textbooks-are-all-you-need-lite", "default/train/*.parquet", "parquet",
                   revision=PARQUET_CONVERSION, rows=682000, tokens_per_doc=1200, bytes_per_doc=4000)),
    Schema("text", ["text"], lambda r: [textformat.textbook(need(r, "text"))]),
]


def offline(cfg):
    section = Schema("offline", [], lambda r: [textformat.textbook(f"{r['title']}\n\n{r['text']}")])
    module = Schema("offline", [], lambda r: [textformat.textbook(f"The {r['module']} module\n\n{r['text']}")])
    sources = []
    if os.path.isdir(offline_sources.PY_DOC_SOURCES):
        sources.append(Source("python-docs", offline_sources.doc_sections, section))
    else:
        print(f"textbook: {offline_sources.PY_DOC_SOURCES} not found (Debian package python3.11-doc); "
              f"using pydoc topics and module docstrings only")
    sources.append(Source("pydoc-topics", offline_sources.pydoc_topics, section))
    sources.append(Source("module-docstrings", offline_sources.module_docstrings, module))
    return sources


def main(argv=None):
    return dataprep.run("textbook", SCHEMAS, offline, argv, meta_extra={"loss": "whole text"})


if __name__ == "__main__":
    dataprep.cli(main)
