"""
Export a NanoPhi model to transformers' GPT-2 format: config.json, model.safetensors and the
GPT-2 tokenizer files (vocab.json, merges.txt, with model_max_length = the model's block_size
and a chat template rendering our chat format), ready for transformers, vLLM or llama.cpp's
convert_hf_to_gguf.py.

    python export.py --init_from=resume --out_dir=out --export_dir=out/hf

export_dir must be new, empty, or an earlier export (it holds nanophi_export.json): export never
deletes a folder it did not write. The folder is filled under a temporary name and swapped in whole.
"""
import os
import re
import shutil
import sys

from configurator import configure
from nanophi.checkpoint import default_out_dir, load_model
from nanophi.hf_export import MARKER, export_hf

init_from = "resume"   # resume (out_dir's best.pt, else ckpt.pt), a .pt file, a gpt2 name, an HF dir, a LoRA adapter dir
out_dir = default_out_dir()  # out/ if it holds a checkpoint, else the most recently trained out*/ folder
which = "best"         # with resume: 'best' or 'latest'
export_dir = ""        # default: <out_dir>/hf; must be new, empty or an earlier export
configure(globals())

# what an export folder holds; a folder with anything else in it is not ours to replace
EXPORT_FILES = {MARKER, "config.json", "generation_config.json", "model.safetensors", "vocab.json",
                "merges.txt", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"}
CHECKPOINT_SIGNS = ("ckpt.pt", "best.pt", "log.jsonl", "nanophi_adapter.json", "adapter_config.json")


def refusal(path):
    """Why export must not write to path (None when it may): never replace what export did not write."""
    if os.path.islink(path):
        return f"export_dir {path!r} is a symbolic link; give a real folder path"
    if not os.path.exists(path):
        return None
    if not os.path.isdir(path):
        return f"export_dir {path!r} is a file, not a folder"
    names = sorted(os.listdir(path))
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    if any(n in CHECKPOINT_SIGNS or n.endswith(".pt") for n in names):
        return (f"export_dir {path!r} is a checkpoint folder ({shown}); export would replace it. "
                f"Export into a new folder, e.g. --export_dir={os.path.join(path, 'hf')}")
    if names and (MARKER not in names or not set(names) <= EXPORT_FILES):
        return (f"export_dir {path!r} is not empty and was not written by export.py ({shown}); "
                f"choose a new or empty folder")
    return None


def clean_leftovers(path):
    """Remove the temporary folders (files.atomic_dir's <name>.tmp-<pid>, .old-<pid>) of killed exports."""
    parent, name = os.path.split(os.path.abspath(path))
    for entry in os.listdir(parent):
        m = re.fullmatch(re.escape(name) + r"\.(tmp|old)-(\d+)", entry)
        if m and os.path.isdir(os.path.join(parent, entry)):
            try:
                os.kill(int(m.group(2)), 0)  # that export is still running
            except ProcessLookupError:
                shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
            except PermissionError:
                pass


export_dir = os.path.normpath(export_dir or os.path.join(out_dir, "hf"))
problem = refusal(export_dir)
if problem:  # before loading anything
    print(f"export.py: {problem}", file=sys.stderr)
    sys.exit(2)
try:
    model, source = load_model(init_from, out_dir=out_dir, which=which)
except (ValueError, FileNotFoundError, RuntimeError) as e:
    print(f"export.py: {e}", file=sys.stderr)
    sys.exit(2)
os.makedirs(os.path.dirname(os.path.abspath(export_dir)), exist_ok=True)
clean_leftovers(export_dir)
try:
    export_hf(model, export_dir, source=source)  # the folder appears complete or not at all
except (ValueError, OSError) as e:  # a bias=False model; a full disk (files.WriteError names the path)
    print(f"export.py: {e}", file=sys.stderr)
    sys.exit(2)
print(f"exported {source} -> {export_dir} ({', '.join(sorted(os.listdir(export_dir)))})")
