"""The one training text format: tags, masks, chat turns, and prompt/training token identity."""
import pytest

import textformat as tf
from tokenizer import EOT_ID, decode


def test_every_example_ends_with_the_single_eot_id():
    for segs in [tf.textbook("Cells divide."), tf.code("def f():\n    return 1", "Return one."),
                 tf.qa("math", "What is 2+3?", "5"), tf.excerpt("The sky is blue.", "It is about the sky."),
                 tf.chat([("user", "hi"), ("assistant", "hello")])]:
        ids, mask = tf.encode_example(segs)
        assert ids[-1] == EOT_ID and ids.count(EOT_ID) == 1  # one id, not '<eot>' (4 tokens)
        assert len(ids) == len(mask) and mask[-1] == 1


def test_textbook_and_code_are_trained_whole():
    ids, mask = tf.encode_example(tf.textbook("Water boils at 100 C."))
    assert decode(ids) == "[Textbook] Water boils at 100 C.<|endoftext|>" and all(mask)
    ids, mask = tf.encode_example(tf.code("def one():\n    return 1", docstring="Return one."))
    assert decode(ids).startswith('[Code] """Return one."""\ndef one():') and all(mask)


def test_qa_masks_only_the_answer_and_prompt_is_the_training_prefix():
    segs = tf.qa("Math", "What is 12*7?", 84)
    ids, mask = tf.encode_example(segs)
    prompt = tf.encode_prompt(tf.qa("math", "What is 12*7?"))
    assert ids[:len(prompt)] == prompt and not any(mask[:len(prompt)])
    assert decode([i for i, m in zip(ids, mask) if m]) == " 84<|endoftext|>"
    assert tf.render_text(segs) == "[Math] What is 12*7?\nAnswer: 84"


def test_chat_trains_bot_turns_and_their_end_of_text():
    turns = [{"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": "Hello, Ada!"},
             {"role": "user", "content": "What is my name?"}, {"role": "assistant", "content": "Your name is Ada."}]
    ids, mask = tf.encode_example(tf.chat(turns, system="Be brief."))
    trained = decode([i for i, m in zip(ids, mask) if m])
    assert trained == " Hello, Ada!<|endoftext|> Your name is Ada.<|endoftext|>"
    text = decode(ids)
    assert text.startswith("[Chat]\n[System]: Be brief.\n[Human]: My name is Ada.\n[Bot]: Hello, Ada!<|endoftext|>\n[Human]:")
    # the prompt for the second reply is exactly the training prefix before it
    prompt = tf.encode_prompt(tf.chat(turns[:3], system="Be brief."))
    assert ids[:len(prompt)] == prompt and mask[len(prompt)] == 1


@pytest.mark.parametrize("style", list(tf.CHAT_STYLES))
def test_chat_styles_and_roleplay_names(style):
    segs = tf.chat([("user", "Hi"), ("assistant", "Ahoy")], task="roleplay", style=style, system="A pirate.",
                   bot_name="Mara" if style == "nanophi" else None)
    text = tf.render_text(segs)
    assert text.startswith("[Roleplay]\n")
    bot = "Mara:" if style == "nanophi" else tf.CHAT_STYLES[style]["bot"]
    assert f"{bot} Ahoy" in text
    assert tf.cut_reply(" Ahoy matey!\n" + tf.markers(style, bot_name="Mara" if style == "nanophi" else None)["user"] + " more",
                        style, bot_name="Mara" if style == "nanophi" else None) == "Ahoy matey!"


def test_prompt_for_each_tag():
    assert tf.render_text(tf.prompt_for("Math", "What is 2+2?")) == "[Math] What is 2+2?\nAnswer:"
    assert tf.render_text(tf.prompt_for("logic", "Is a square a rectangle?")).endswith("\nAnswer:")
    assert tf.render_text(tf.prompt_for("[Excerpt]", "Text.")) == "[Excerpt] Text.\n[Response]"
    assert tf.render_text(tf.prompt_for("chat", "hi")) == "[Chat]\n[Human]: hi\n[Bot]:"
    assert tf.render_text(tf.prompt_for("Textbook", "Photosynthesis")) == "[Textbook] Photosynthesis"
    with pytest.raises(ValueError, match="unknown tag 'Poetry'; known tags: Textbook, Code"):
        tf.task_of("Poetry")


def test_bad_turns_are_rejected():
    with pytest.raises(ValueError, match="turn 1: role must be"):
        tf.chat([("user", "hi"), ("narrator", "x")])
    with pytest.raises(ValueError, match="turn 0: content must be a string"):
        tf.chat([("user", 5)])
    with pytest.raises(ValueError, match="unknown chat style"):
        tf.chat([("user", "hi")], style="klingon")
