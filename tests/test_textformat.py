"""The one training text format: tags, masks, chat turns, and prompt/training token identity."""
import pytest

from nanophi import textformat
from nanophi.tokenizer import EOT_ID, decode


def test_every_example_ends_with_the_single_eot_id():
    for segs in [textformat.textbook("Cells divide."), textformat.code("def f():\n    return 1", "Return one."),
                 textformat.qa("math", "What is 2+3?", "5"), textformat.excerpt("The sky is blue.", "It is about the sky."),
                 textformat.chat([("user", "hi"), ("assistant", "hello")])]:
        ids, mask = textformat.encode_example(segs)
        assert ids[-1] == EOT_ID and ids.count(EOT_ID) == 1  # one id, not '<eot>' (4 tokens)
        assert len(ids) == len(mask) and mask[-1] == 1


def test_textbook_and_code_are_trained_whole():
    ids, mask = textformat.encode_example(textformat.textbook("Water boils at 100 C."))
    assert decode(ids) == "[Textbook] Water boils at 100 C.<|endoftext|>" and all(mask)
    ids, mask = textformat.encode_example(textformat.code("def one():\n    return 1", docstring="Return one."))
    assert decode(ids).startswith('[Code] """Return one."""\ndef one():') and all(mask)


def test_qa_masks_only_the_answer_and_prompt_is_the_training_prefix():
    segs = textformat.qa("Math", "What is 12*7?", 84)
    ids, mask = textformat.encode_example(segs)
    prompt = textformat.encode_prompt(textformat.qa("math", "What is 12*7?"))
    assert ids[:len(prompt)] == prompt and not any(mask[:len(prompt)])
    assert decode([i for i, m in zip(ids, mask) if m]) == " 84<|endoftext|>"
    assert textformat.render_text(segs) == "[Math] What is 12*7?\nAnswer: 84"


def test_chat_trains_bot_turns_and_their_end_of_text():
    turns = [{"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": "Hello, Ada!"},
             {"role": "user", "content": "What is my name?"}, {"role": "assistant", "content": "Your name is Ada."}]
    ids, mask = textformat.encode_example(textformat.chat(turns, system="Be brief."))
    trained = decode([i for i, m in zip(ids, mask) if m])
    assert trained == " Hello, Ada!<|endoftext|> Your name is Ada.<|endoftext|>"
    text = decode(ids)
    assert text.startswith("[Chat]\n[System]: Be brief.\n[Human]: My name is Ada.\n[Bot]: Hello, Ada!<|endoftext|>\n[Human]:")
    # the prompt for the second reply is exactly the training prefix before it
    prompt = textformat.encode_prompt(textformat.chat(turns[:3], system="Be brief."))
    assert ids[:len(prompt)] == prompt and mask[len(prompt)] == 1


@pytest.mark.parametrize("style", list(textformat.CHAT_STYLES))
def test_chat_styles_and_roleplay_names(style):
    segs = textformat.chat([("user", "Hi"), ("assistant", "Ahoy")], task="roleplay", style=style, system="A pirate.",
                   bot_name="Mara" if style == "nanophi" else None)
    text = textformat.render_text(segs)
    assert text.startswith("[Roleplay]\n")
    bot = "Mara:" if style == "nanophi" else textformat.CHAT_STYLES[style]["bot"]
    assert f"{bot} Ahoy" in text
    assert textformat.cut_reply(" Ahoy matey!\n" + textformat.markers(style, bot_name="Mara" if style == "nanophi" else None)["user"] + " more",
                        style, bot_name="Mara" if style == "nanophi" else None) == "Ahoy matey!"


def test_prompt_for_each_tag():
    assert textformat.render_text(textformat.prompt_for("Math", "What is 2+2?")) == "[Math] What is 2+2?\nAnswer:"
    assert textformat.render_text(textformat.prompt_for("logic", "Is a square a rectangle?")).endswith("\nAnswer:")
    assert textformat.render_text(textformat.prompt_for("[Excerpt]", "Text.")) == "[Excerpt] Text.\n[Response]"
    assert textformat.render_text(textformat.prompt_for("chat", "hi")) == "[Chat]\n[Human]: hi\n[Bot]:"
    assert textformat.render_text(textformat.prompt_for("Textbook", "Photosynthesis")) == "[Textbook] Photosynthesis"
    with pytest.raises(ValueError, match="unknown tag 'Poetry'; known tags: Textbook, Code"):
        textformat.task_of("Poetry")


def test_bad_turns_are_rejected():
    with pytest.raises(ValueError, match="turn 1: role must be"):
        textformat.chat([("user", "hi"), ("narrator", "x")])
    with pytest.raises(ValueError, match="turn 0: content must be a string"):
        textformat.chat([("user", 5)])
    with pytest.raises(ValueError, match="unknown chat style"):
        textformat.chat([("user", "hi")], style="klingon")
