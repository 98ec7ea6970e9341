# The main job's finish: 400 steps from the finetune's last checkpoint, mostly the showcase's noun
# chains, with the token embeddings frozen, into out-nanophi-cpu (the model pipeline.py evaluates).
# A copy of a never-seen noun forms on rows of chains alone when every embedding keeps the base's
# vector: 20/20 held out after 300 chain-only steps from the base, 0-2/20 when the chains were a fifth
# of the finetune's mixture (docs/pipeline.md). Math keeps 3 of 10 rows, so what the finetune learnt
# mostly stays: held out after it, doubling 8/20, running 12/20, chain 14/20 (chance 6.7).
# Measured on a fresh clone, 2-core AMD EPYC, AVX2 only (fp32): 0.24-0.36 s/iteration, 122 s in all
# python train.py config/nanophi_cpu_chain.py
out_dir = "out-nanophi-cpu"
init_from = "out-nanophi-cpu-mix/ckpt.pt"
tasks = {"chain": 6.0, "math": 3.0, "logic": 0.3, "chat": 0.3, "roleplay": 0.1, "textbook": 0.1, "code": 0.1,
         "excerpt": 0.1, "symposium": 0.1}
train_embeddings = "none"
block_size = 128
dropout = 0.0
batch_size = 8
gradient_accumulation_steps = 1
max_iters = 400
eval_interval = 400
eval_iters = 1
always_save_checkpoint = False
learning_rate = 5e-3
decay_lr = False  # constant: the copy forms late in a decayed schedule
warmup_iters = 10
weight_decay = 0.1
device = "auto"
dtype = "auto"
compile = None
log_interval = 10
