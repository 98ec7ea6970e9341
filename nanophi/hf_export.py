"""
model.py's GPT to transformers' GPT-2 format (config.json + model.safetensors), for transformers,
vLLM or llama.cpp's convert_hf_to_gguf.py. The other direction is GPT.from_pretrained.
"""
import torch

from model import GPT
from nanophi.files import atomic_dir
from nanophi.tokenizer import EOT_ID, VOCAB_SIZE


def to_hf(model):
    """A transformers GPT2LMHeadModel with model's weights (the padded vocabulary rows dropped)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    c = model.config
    if not c.bias:
        raise ValueError("transformers' GPT-2 has biases; a bias=False model cannot be exported")
    vocab = min(c.vocab_size, VOCAB_SIZE)
    hf_config = GPT2Config(vocab_size=vocab, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
                           n_head=c.n_head, activation_function="gelu_new", resid_pdrop=c.dropout,
                           embd_pdrop=c.dropout, attn_pdrop=c.dropout, layer_norm_epsilon=1e-5,
                           bos_token_id=EOT_ID, eos_token_id=EOT_ID, tie_word_embeddings=True)
    hf = GPT2LMHeadModel(hf_config)
    sd = {}
    for k, v in model.state_dict().items():
        v = v.detach().float().cpu()
        if k.endswith(GPT.TRANSPOSED):  # transformers' Conv1D holds the transpose of nn.Linear's weight
            v = v.t()
        if k in ("transformer.wte.weight", "lm_head.weight"):
            v = v[:vocab]
        sd[k] = v.contiguous()
    hf.load_state_dict(sd, strict=False)
    hf.tie_weights()
    return hf


def save_hf_model(model, path):
    """Write config.json and model.safetensors into the directory path."""
    with torch.no_grad():
        to_hf(model).save_pretrained(path, safe_serialization=True)


def export_hf(model, path):
    """save_hf_model into a new directory that replaces path whole (files.atomic_dir)."""
    with atomic_dir(path) as tmp:
        save_hf_model(model, tmp)
    return path
