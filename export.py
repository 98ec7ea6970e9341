"""
Export a NanoPhi model to transformers' GPT-2 format: config.json, model.safetensors and the
GPT-2 tokenizer files (vocab.json, merges.txt), ready for transformers, vLLM or llama.cpp's
convert_hf_to_gguf.py.

    python export.py --init_from=resume --out_dir=out --export_dir=out/hf
"""
import os

from configurator import configure
from nanophi.checkpoint import load_model
from nanophi.files import atomic_dir
from nanophi.hf_export import save_hf_model
from nanophi.tokenizer import save_hf_tokenizer

init_from = "resume"   # resume (out_dir's best.pt, else ckpt.pt), a .pt file, a gpt2 name, an HF dir, a LoRA adapter dir
out_dir = "out"
which = "best"         # with resume: 'best' or 'latest'
export_dir = ""        # default: <out_dir>/hf
configure(globals())

export_dir = export_dir or os.path.join(out_dir, "hf")
model, source = load_model(init_from, out_dir=out_dir, which=which)
with atomic_dir(export_dir) as tmp:  # the directory appears complete or not at all
    save_hf_model(model, tmp)
    save_hf_tokenizer(tmp)
print(f"exported {source} -> {export_dir} ({', '.join(sorted(os.listdir(export_dir)))})")
