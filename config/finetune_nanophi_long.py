# Long context: GPT-2 medium grown to 4096 positions (position interpolation), gradient
# checkpointing so activations fit a 16 GB T4. 1 row x 80 accumulation x 4096 = 327,680 tokens.
# python train.py config/finetune_nanophi_long.py
out_dir = "out-nanophi-long"
init_from = "gpt2-medium"
tasks = {"textbook": 1.0, "code": 1.0, "math": 1.0, "logic": 1.0, "roleplay": 0.5, "chat": 1.0, "excerpt": 1.0}
block_size = 4096
gradient_checkpointing = True
batch_size = 1
gradient_accumulation_steps = 80
max_iters = 200
eval_interval = 10
eval_iters = 2
always_save_checkpoint = False
learning_rate = 3e-5
min_lr = 3e-6
warmup_iters = 20  # the new positions start as interpolations: warm up gently
lr_decay_iters = 200
dtype = "auto"
