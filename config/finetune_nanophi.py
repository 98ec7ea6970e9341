# NanoPhi on a Colab T4 (16 GB, sm_75: fp16 + GradScaler): finetune GPT-2 medium on the whole
# task mix, as NanoPhi did: 4 rows x 80 accumulation x 1024 tokens = 327,680 tokens per iteration.
# python train.py config/finetune_nanophi.py   (prepare the data first: README, "Data")
out_dir = "out-nanophi"
init_from = "gpt2-medium"
tasks = {"textbook": 1.0, "code": 1.0, "math": 1.0, "logic": 1.0, "roleplay": 0.5, "chat": 1.0, "excerpt": 0.5}
block_size = 1024
batch_size = 4
gradient_accumulation_steps = 80
max_iters = 200
# evaluate often but cheaply: 2 batches per task and split (NanoPhi's 200 x 2 cost as much as training)
eval_interval = 5
eval_iters = 2
always_save_checkpoint = False  # best.pt (0.7 GB, fp16 weights) when val improves; ckpt.pt on the clock below
save_interval_min = 25  # ckpt.pt (4.3 GB: weights, AdamW, RNG, data position) every 25 min, on SIGTERM and at the end
learning_rate = 6e-5
min_lr = 6e-6
warmup_iters = 10  # NanoPhi-alpha's 2000 outlived its 200-iteration run
lr_decay_iters = 200
weight_decay = 0.1
dropout = 0.0
dtype = "auto"  # float16 + GradScaler on a T4; bfloat16 on A100/L4/H100
log_interval = 1
