# The main job's stand-in for GPT-2: a small GPT-2-shaped base model (GPT-2's tokenizer) pretrained
# from scratch on plain text only, the textbook and code tasks, on 2 CPU cores in a few minutes.
# pipeline.py exports it to a transformers directory and finetunes from there (config/nanophi_cpu.py),
# the path config/finetune_nanophi.py takes from gpt2-medium on a GPU.
# python train.py config/nanophi_cpu_base.py
out_dir = "out-nanophi-cpu-base"
init_from = "scratch"
tasks = {"textbook": 1.0, "code": 1.0}
n_layer = 4
n_head = 4
n_embd = 256
block_size = 256
dropout = 0.0
batch_size = 8
gradient_accumulation_steps = 1
max_iters = 250  # ~0.8 s/iteration on 2 idle cores (fp32): about 3.5 minutes
eval_interval = 100
eval_iters = 1
learning_rate = 2e-3
min_lr = 2e-4
warmup_iters = 15
weight_decay = 0.1
device = "auto"
dtype = "auto"
compile = None
log_interval = 10
