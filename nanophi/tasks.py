"""
The tasks, one definition: each task's name (its data/<name>/ directory), the tag its examples
start with, how eval scores it, and the prompt the main job samples it with. textformat's tags,
train.py's known tasks and default mixture, data/prepare_all.py's list, eval.py's question-
answering families and pipeline.py's samples all derive from TASKS.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    name: str
    tag: str             # the tag its examples start with
    renders_as: str = ""  # another task whose format its examples take ('' = its own)
    qa: bool = False     # held-out questions with one exact answer (data/<name>/eval.jsonl)
    generated: bool = False  # its offline training items are generated (data prep's num_generated)
    chat: bool = False   # conversations: a reply ends at the bot's end-of-text
    sample: str = ""     # the main job's greedy sample prompt ('' = none)
    system: str = ""     # ... and its system prompt, for chat tasks


# in preparation order (data/prepare_all.py)
TASKS = (
    Task("textbook", "[Textbook]", sample="Python's list comprehension"),
    Task("code", "[Code]", sample='def add(a, b):\n    """Return the sum of a and b."""\n'),
    Task("math", "[Math]", qa=True, generated=True, sample="What is 17 + 25?"),
    Task("logic", "[Logic]", qa=True, generated=True, sample="All cats are mammals. Tom is a cat. Is Tom a mammal?"),
    # the showcase's noun chains, rendered as logic: a task of their own so their rows hold only chains
    Task("chain", "[Logic]", renders_as="logic", generated=True),
    Task("excerpt", "[Excerpt]", sample="The with statement is used to wrap the execution of a block with methods "
                                        "defined by a context manager."),
    Task("chat", "[Chat]", chat=True, sample="Hi! What can you help me with?"),
    Task("roleplay", "[Roleplay]", chat=True, sample="Good evening, captain. Where are we headed?",
         system="Captain Mara commands the starship Meridian."),
    # MiniSymposium's hand-written conversations, rendered as chat (no tag of its own)
    Task("symposium", "[Chat]", renders_as="chat", chat=True),
)
BY_NAME = {t.name: t for t in TASKS}
TASK_NAMES = tuple(BY_NAME)
TAGS = {t.name: t.tag for t in TASKS if not t.renders_as}  # task -> tag, for the tasks with a tag of their own
QA_TASKS = tuple(t.name for t in TASKS if t.qa)
GENERATED_TASKS = tuple(t.name for t in TASKS if t.generated)
CHAT_TASKS = tuple(t.name for t in TASKS if t.chat and not t.renders_as)
SAMPLES = tuple(t for t in TASKS if t.sample)


def default_mixture():
    """train.py's default: every task with a tag of its own, equal weights."""
    return {name: 1.0 for name in TAGS}
