"""nanophi/tasks.py: the one task table and what derives from it agree with each other and the data folders."""
import os

from conftest import ROOT
from nanophi import tasks


def test_every_task_has_its_data_folder_and_a_unique_name():
    assert len(tasks.TASK_NAMES) == len(tasks.TASKS)  # BY_NAME would silently drop a repeated name
    for t in tasks.TASKS:
        assert os.path.isfile(os.path.join(ROOT, "data", t.name, "prepare.py")), t.name


def test_tags_are_distinct_and_a_borrowed_format_takes_its_owners_tag():
    own = [t.tag for t in tasks.TASKS if not t.renders_as]
    assert len(set(own)) == len(own) and list(tasks.TAGS.values()) == own
    for t in tasks.TASKS:
        assert t.tag.startswith("[") and t.tag.endswith("]"), t
        if t.renders_as:
            owner = tasks.BY_NAME[t.renders_as]
            assert not owner.renders_as and t.tag == owner.tag and t.chat == owner.chat, t
            assert t.name not in tasks.TAGS and t.name not in tasks.CHAT_TASKS


def test_qa_tasks_write_eval_items_and_system_prompts_are_for_chat():
    for t in tasks.TASKS:
        prepare = open(os.path.join(ROOT, "data", t.name, "prepare.py")).read()
        assert ("eval_items" in prepare) == t.qa, f"{t.name}: qa={t.qa} but its prepare.py disagrees"
        assert not t.system or t.chat, t  # a system prompt only means something in a conversation
    assert tasks.QA_TASKS and tasks.CHAT_TASKS and tasks.SAMPLES


def test_default_mixture_is_every_tagged_task_equally_and_a_fresh_dict():
    mix = tasks.default_mixture()
    assert list(mix) == list(tasks.TAGS) and set(mix.values()) == {1.0}
    mix["math"] = 0.0
    assert tasks.default_mixture()["math"] == 1.0  # train.py may change its copy
