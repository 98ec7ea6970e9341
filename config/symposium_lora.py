# MiniSymposium's recipe with LoRA: the small hand-written symposium set (several perspectives
# before a conclusion, some self-corrections), a very low learning rate, many epochs. Only the
# adapters train; out-symposium/lora/ holds them (a few MB) and loads merged:
#   python sample.py --init_from=out-symposium/lora ...
# Start from your NanoPhi finetune instead with --init_from=out-nanophi/best.pt
out_dir = "out-symposium"
init_from = "gpt2-medium"
tasks = {"symposium": 1.0}
block_size = 1024
batch_size = 4
gradient_accumulation_steps = 4
epochs = 200  # sets max_iters from the set's size
eval_interval = 25
eval_iters = 2
always_save_checkpoint = False
lora_rank = 16
lora_alpha = 32
lora_dropout = 0.05
lora_targets = ["c_attn", "c_proj", "c_fc"]
learning_rate = 1e-5
min_lr = 1e-6
warmup_iters = 10
weight_decay = 0.0
dtype = "auto"
