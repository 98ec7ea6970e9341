# nanoChatGPT's job done right: GPT-2 medium on conversations, loss only on the bot's turns
# (the prepared masks: each bot reply and its closing end-of-text are the only targets).
# python train.py config/finetune_chat.py
out_dir = "out-chat"
init_from = "gpt2-medium"
tasks = {"chat": 1.0, "roleplay": 0.5}
block_size = 1024
batch_size = 4
gradient_accumulation_steps = 32
max_iters = 300
eval_interval = 10
eval_iters = 4
always_save_checkpoint = False
learning_rate = 3e-5
min_lr = 3e-6
warmup_iters = 15
lr_decay_iters = 300
dtype = "auto"
