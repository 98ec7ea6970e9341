"""
GPT-2 in one file, nanoGPT-style:
- GPT.from_pretrained loads gpt2 .. gpt2-xl or any local transformers GPT-2 directory
  (logits match transformers' GPT2LMHeadModel; GELU is the tanh form GPT-2 was trained with),
- block_size can grow (position interpolation of wpe) as well as crop,
- forward() continues a KV cache when given one (nanophi/engine.py owns the cache and the one
  generation loop); a short no-cache `generate` here is the reference the tests compare it with,
- MFU against a peak the caller passes (device.py knows each device's), achieved FLOP/s always.
Export back to transformers' format lives in nanophi/hf_export.py. Sampling lives in nanophi/sampling.py.
"""
import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

from nanophi.sampling import fit_context, sample_next



def _compiling():
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(is_compiling and is_compiling())


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded to a multiple of 64 for speed
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # GPT-2 has biases in Linears and LayerNorms
    gradient_checkpointing: bool = False  # recompute blocks in backward: long contexts on small GPUs


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's has no bias=False before 2.1)."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CrossEntropySum(torch.autograd.Function):
    """Summed cross-entropy of logits (N, V) and targets (N,), as F.cross_entropy(reduction='sum'),
    with the gradient written into the logits' own memory. F.cross_entropy keeps a log-softmax copy
    and builds its gradient in two more fresh (N, V) tensors; at GPT-2's 50K vocabulary those are
    the largest tensors of a small model's step, and on a CPU each costs page faults and bandwidth.
    The logits must be a tensor nothing else reads after the loss (lm_head's output is)."""
    CHUNK = 64  # rows per pass: the temporaries stay in cache

    @staticmethod
    def forward(ctx, logits, targets):
        lse = torch.cat([torch.logsumexp(c, dim=-1) for c in logits.split(CrossEntropySum.CHUNK)])
        ctx.save_for_backward(logits, targets, lse)
        return (lse - logits.gather(1, targets.unsqueeze(1)).squeeze(1)).sum()

    @staticmethod
    def backward(ctx, grad):
        logits, targets, lse = ctx.saved_tensors  # a second backward fails autograd's version check
        for c, c_lse in zip(logits.split(CrossEntropySum.CHUNK), lse.split(CrossEntropySum.CHUNK)):
            c.sub_(c_lse.unsqueeze(1)).exp_().mul_(grad)  # softmax * grad, in place
        logits[torch.arange(len(targets), device=logits.device), targets] -= grad
        return logits, None


class CausalSelfAttention(nn.Module):

    def __init__(self, config, layer_idx):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.layer_idx = layer_idx

    def forward(self, x, cached=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        dropout_p = self.dropout if self.training else 0.0
        if cached is not None:  # generation: engine.CacheBatch knows its slots' lengths and how they attend
            y = cached.attend(self.layer_idx, q, k, v)
        elif T == 1:  # one new token attends to everything before it
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's gelu_new; exact GELU drifts from the weights
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config, layer_idx):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cached=None):
        x = x + self.attn(self.ln_1(x), cached)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.vocab_size is not None
        assert config.block_size is not None
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying, as GPT-2
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():  # scaled init of residual projections (GPT-2 paper)
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def get_num_params(self, non_embedding=True):
        """Parameter count; position embeddings are left out by default (as in FLOP counts)."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None, cache=None, reduction="mean", last_only=False, slots=None):
        """
        idx (B, T) ids -> (logits (B, T, vocab), None). With targets (B, T), -1 = no loss there:
        (None, loss), the loss a mean over counted targets, or their sum with reduction='sum' (gradient accumulation
        over micro-batches with different mask counts divides once by the total). A batch with
        no counted target gives loss 0, never NaN. With cache (an engine.KVCache), idx continues the
        cached positions of the cache's slots `slots` (default 0..B-1), each at its own length.
        last_only (no targets): logits (B, 1, vocab) of the last position only, as generation needs
        (the vocab projection of every prompt position is a large share of a long prefill); or a (B,)
        tensor of each row's last position (rows of different lengths padded at the end).
        """
        device = idx.device
        b, t = idx.size()
        cached = None  # this pass' slots of the cache (an engine.CacheBatch)
        if cache is not None:
            cached = cache.batch(range(b) if slots is None else slots, t, device)
            pos, end = cached.positions, cached.end
        else:
            pos, end = torch.arange(0, t, dtype=torch.long, device=device), t
        if end > self.config.block_size:
            raise ValueError(f"sequence of length {end} exceeds block_size {self.config.block_size}")
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            if self.config.gradient_checkpointing and self.training and cache is None:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x, cached)
        if cached is not None:
            cached.advance()
        x = self.transformer.ln_f(x)
        if targets is None:
            if isinstance(last_only, torch.Tensor):
                x = x[torch.arange(b, device=device), last_only].unsqueeze(1)
            elif last_only:
                x = x[:, -1:, :]
            return self.lm_head(x), None
        # the vocab projection only where there is a target: in SFT most positions are masked
        # prompt tokens, and this projection (n_embd x 50304) is the largest matmul of a small GPT
        targets = targets.reshape(-1)
        keep = targets != -1
        if _compiling():  # a data-dependent row count would break the graph: project every position
            logits = self.lm_head(x).view(-1, self.config.vocab_size)
            loss_sum = F.cross_entropy(logits.float(), targets, ignore_index=-1, reduction="sum")
        else:
            hidden = x.reshape(-1, x.size(-1))
            if not keep.all():
                hidden, targets = hidden[keep], targets[keep]
            loss_sum = CrossEntropySum.apply(self.lm_head(hidden).float(), targets)
        if reduction == "sum":
            return None, loss_sum
        return None, loss_sum / keep.sum().clamp(min=1)

    # ------------------------------------------------------------------ context length

    def resize_block_size(self, block_size):
        """Crop (keep the first positions) or grow (linearly interpolate wpe, as in position
        interpolation) the context length, so a 1024 checkpoint can finetune at 2048..8192."""
        old = self.config.block_size
        if block_size == old:
            return
        wpe = self.transformer.wpe.weight.data
        if block_size < old:
            new = wpe[:block_size].clone()
        else:
            new = F.interpolate(wpe.t().unsqueeze(0).float(), size=block_size, mode="linear",
                                align_corners=True).squeeze(0).t().to(wpe.dtype).contiguous()
        self.transformer.wpe = nn.Embedding(block_size, wpe.size(1), device=wpe.device, dtype=wpe.dtype)
        self.transformer.wpe.weight.data.copy_(new)
        self.config.block_size = block_size

    crop_block_size = resize_block_size  # nanoGPT's name; here it can also grow

    # ------------------------------------------------------------------ transformers interop

    @classmethod
    def from_pretrained(cls, name_or_path, override_args=None):
        """Load gpt2/gpt2-medium/gpt2-large/gpt2-xl (hub or cache) or a local transformers GPT-2
        directory. override_args may set dropout, block_size (crop or grow) and gradient_checkpointing."""
        override_args = dict(override_args or {})
        allowed = {"dropout", "block_size", "gradient_checkpointing"}
        bad = set(override_args) - allowed
        if bad:
            raise ValueError(f"from_pretrained: cannot override {sorted(bad)}; allowed: {sorted(allowed)}")
        from transformers import GPT2LMHeadModel
        hf = GPT2LMHeadModel.from_pretrained(name_or_path, dtype=torch.float32)
        c = hf.config
        if c.model_type != "gpt2":
            raise ValueError(f"{name_or_path}: model_type {c.model_type!r}, expected a GPT-2 checkpoint")
        config = GPTConfig(block_size=c.n_positions, vocab_size=c.vocab_size, n_layer=c.n_layer,
                           n_head=c.n_head, n_embd=c.n_embd, bias=True,
                           dropout=override_args.get("dropout", 0.0),
                           gradient_checkpointing=override_args.get("gradient_checkpointing", False))
        model = cls(config)
        model.load_hf_state_dict(hf.state_dict())
        if "block_size" in override_args:
            model.resize_block_size(override_args["block_size"])
        return model

    # transformers' GPT-2 uses Conv1D, whose weights are the transpose of nn.Linear's
    TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

    def load_hf_state_dict(self, sd_hf):
        sd = self.state_dict()
        keys = [k for k in sd_hf if not k.endswith((".attn.masked_bias", ".attn.bias"))]
        mine = [k for k in sd if k != "lm_head.weight"]  # tied to wte
        missing = set(mine) - set(keys)
        if missing:
            raise ValueError(f"checkpoint lacks {sorted(missing)[:5]}")
        with torch.no_grad():
            for k in mine:
                src = sd_hf[k].t() if k.endswith(self.TRANSPOSED) else sd_hf[k]
                if k == "transformer.wte.weight" and src.shape[0] < sd[k].shape[0]:  # padded vocab
                    sd[k].zero_()
                    sd[k][: src.shape[0]].copy_(src)
                    continue
                if src.shape != sd[k].shape:
                    raise ValueError(f"{k}: checkpoint shape {tuple(src.shape)} != model {tuple(sd[k].shape)}")
                sd[k].copy_(src)

    # ------------------------------------------------------------------ training helpers

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        """AdamW; weight decay only on tensors of 2+ dims (matmuls, embeddings), none on biases/norms."""
        params = {pn: p for pn, p in self.named_parameters() if p.requires_grad}
        decay = [p for p in params.values() if p.dim() >= 2]
        no_decay = [p for p in params.values() if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        fused = "fused" in inspect.signature(torch.optim.AdamW).parameters and device_type in ("cuda", "cpu")
        extra = {"fused": True} if fused else {}
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **extra)

    def flops_per_token(self, seq_len=None):
        """Training FLOPs per token: 6N + 12*L*H*Q*T (PaLM appendix B; N without wpe)."""
        cfg = self.config
        T = seq_len or cfg.block_size
        return 6 * self.get_num_params() + 12 * cfg.n_layer * cfg.n_head * (cfg.n_embd // cfg.n_head) * T

    def estimate_mfu(self, fwdbwd_per_iter, seconds, peak_flops=None, seq_len=None):
        """(mfu, achieved FLOP/s) of fwdbwd_per_iter sequences in seconds. mfu is against
        peak_flops (device.peak_flops gives the device's) and None without one (CPU)."""
        T = seq_len or self.config.block_size
        achieved = self.flops_per_token(T) * T * fwdbwd_per_iter / seconds
        return (achieved / peak_flops if peak_flops else None), achieved

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0,
                 no_repeat_ngram_size=0, stop_ids=None, generator=None, pad_id=None):
        """
        nanoGPT's generate, without a cache: the reference the tests compare nanophi/engine.py with
        (sample.py, eval.py and serve.py drive the engine). idx (B, T) -> (B, T + new). The window
        follows sampling.fit_context, as the engine's does. Rows that hit a stop id are padded after
        it with pad_id (default: the first stop id); it ends early when every row has stopped.
        """
        block_size = self.config.block_size
        stop = torch.tensor(sorted(set(stop_ids or [])), dtype=torch.long, device=idx.device)
        done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        pad = pad_id if pad_id is not None else (min(stop_ids) if stop_ids else 0)
        seen, out = idx, idx
        start = idx.size(1) - len(fit_context(range(idx.size(1)), block_size, max_new_tokens))
        for step in range(max_new_tokens):
            logits, _ = self(seen[:, start:], last_only=True)
            nxt = sample_next(logits[:, -1, :], seen, temperature, top_k, top_p, repetition_penalty,
                              no_repeat_ngram_size, generator, stop)
            seen = torch.cat((seen, nxt.unsqueeze(1)), dim=1)
            out = torch.cat((out, torch.where(done, torch.full_like(nxt, pad), nxt).unsqueeze(1)), dim=1)
            done = done | torch.isin(nxt, stop)
            if done.all():
                break
            if seen.size(1) - start > block_size:  # the window is full: start it again
                start = seen.size(1) - len(fit_context(range(seen.size(1)), block_size, max_new_tokens - step - 1))
        return out
