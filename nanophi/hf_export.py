"""
model.py's GPT to a transformers GPT-2 folder (config.json, model.safetensors, GPT-2's tokenizer files
with our chat template), for transformers, vLLM and llama.cpp's convert_hf_to_gguf.py. export.py is its
command line; the other direction is GPT.from_pretrained.
"""
import os

import torch

from model import GPT
from nanophi import textformat
from nanophi.files import atomic_dir, write_json_atomic
from nanophi.tokenizer import EOT_ID, VOCAB_SIZE, save_hf_tokenizer

MARKER = "nanophi_export.json"  # says a folder is an export, so a later export may replace it


def hf_config(c):
    """transformers' GPT2Config for our GPTConfig c, with every key the official gpt2 config.json carries."""
    from transformers import GPT2Config
    if not c.bias:
        raise ValueError("transformers' GPT-2 has biases; a bias=False model cannot be exported")
    # n_ctx: transformers ignores it, but llama.cpp's converter reads it for the context length
    return GPT2Config(vocab_size=min(c.vocab_size, VOCAB_SIZE), n_positions=c.block_size, n_ctx=c.block_size,
                      n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head, n_inner=4 * c.n_embd,
                      activation_function="gelu_new", resid_pdrop=c.dropout, embd_pdrop=c.dropout,
                      attn_pdrop=c.dropout, layer_norm_epsilon=1e-5, bos_token_id=EOT_ID, eos_token_id=EOT_ID,
                      tie_word_embeddings=True, architectures=["GPT2LMHeadModel"])


def to_hf(model):
    """A transformers GPT2LMHeadModel with model's weights (the padded vocabulary rows dropped)."""
    from transformers import GPT2LMHeadModel
    config = hf_config(model.config)
    hf = GPT2LMHeadModel(config)
    sd = {}
    for k, v in model.state_dict().items():
        v = v.detach().float().cpu()
        if k.endswith(GPT.TRANSPOSED):  # transformers' Conv1D holds the transpose of nn.Linear's weight
            v = v.t()
        if k in ("transformer.wte.weight", "lm_head.weight"):
            v = v[:config.vocab_size]
        sd[k] = v.contiguous()
    hf.load_state_dict(sd, strict=False)
    hf.tie_weights()
    return hf


def export_hf(model, path, source="model"):
    """Write the whole export folder for model into path, replacing it whole (files.atomic_dir):
    the folder appears complete or not at all. source: what was exported, recorded in MARKER."""
    umask = os.umask(0)
    os.umask(umask)
    with atomic_dir(path) as tmp, torch.no_grad():
        hf = to_hf(model)
        hf.save_pretrained(tmp, safe_serialization=True)
        # the full dict, not the difference from GPT2Config's defaults (which older transformers write):
        # llama.cpp's converter reads n_embd, n_layer, n_head from the file, default or not
        hf.config.to_json_file(os.path.join(tmp, "config.json"), use_diff=False)
        save_hf_tokenizer(tmp, model_max_length=model.config.block_size, chat_template=textformat.chat_template())
        write_json_atomic(os.path.join(tmp, MARKER), {"source": source, "block_size": model.config.block_size})
        for name in os.listdir(tmp):  # safetensors writes its file private (0600); an export is ordinary output
            os.chmod(os.path.join(tmp, name), 0o666 & ~umask)
    return path
