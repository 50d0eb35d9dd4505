"""Templates and the processor: official prompt strings, exact placeholder expansion."""

from __future__ import annotations

import pytest

from videollama.processor import Processor
from videollama.templates import AV_MESSAGE, get_template, join_question, media_message


def test_llama2_prompt_matches_official_layout():
    t = get_template("llama_2")
    prompt = t.render("SYS", [("q1", "a1"), ("q2", None)])
    assert prompt == "[INST] <<SYS>>\nSYS\n<</SYS>>\n\nq1 [/INST] a1 </s><s>[INST] q2 [/INST]"


def test_vicuna_prompt_matches_official_layout():
    t = get_template("vicuna_v0")
    assert t.render("", [("q1", "a1"), ("q2", None)]) == "###Human: q1###Assistant: a1###Human: q2###Assistant:"
    assert t.clean_answer(" it is red###Human: more") == "it is red"


def test_media_messages_are_the_official_ones():
    assert media_message(image=True) == "<Image><ImageHere></Image> "
    video = media_message(video=True, timestamps="The video contains 2 frames sampled at 0.0, 1.0 seconds. ")
    assert video == "<Video><ImageHere></Video> The video contains 2 frames sampled at 0.0, 1.0 seconds. "
    assert media_message(video=True, audio=True) == AV_MESSAGE
    assert AV_MESSAGE.startswith("Close your eyes, open your ears and you imagine only based on the sound that: <AudioHere>. " + " " * 16)
    assert AV_MESSAGE.endswith(" " * 16 + "Now answer my question based on what you have just seen and heard.")
    assert join_question(media_message(image=True), "what?") == "<Image><ImageHere></Image>  what?"


def test_processor_expands_placeholders_to_exact_counts(tiny_tokenizer, tiny_model):
    proc = Processor(tiny_tokenizer, tiny_model.config)
    ids = proc.tokenize("[INST] sound: <AudioHere>. see <Video><ImageHere></Video> what? [/INST]")
    assert ids[0] == tiny_tokenizer.bos_token_id
    assert ids.count(proc.image_token_id) == 32 and ids.count(proc.audio_token_id) == 8
    first_image = ids.index(proc.image_token_id)
    assert ids[first_image:first_image + 32] == [proc.image_token_id] * 32
    first_audio = ids.index(proc.audio_token_id)
    assert first_audio < first_image and ids[first_audio:first_audio + 8] == [proc.audio_token_id] * 8
    # Text around the markers is tokenised segment by segment (official get_context_emb).
    segments = ["[INST] sound: ", ". see <Video>", "</Video> what? [/INST]"]
    expected = [tiny_tokenizer.bos_token_id]
    expected += tiny_tokenizer(segments[0], add_special_tokens=False)["input_ids"] + [proc.audio_token_id] * 8
    expected += tiny_tokenizer(segments[1], add_special_tokens=False)["input_ids"] + [proc.image_token_id] * 32
    expected += tiny_tokenizer(segments[2], add_special_tokens=False)["input_ids"]
    assert ids == expected


def test_stop_strings_come_from_the_template_not_token_ids(tiny_pipeline):
    # The vicuna stop string is found in decoded text, whatever ids the tokenizer gives it.
    from videollama.templates import get_template

    pipe = tiny_pipeline
    old = pipe.template
    try:
        pipe.template = get_template("vicuna_v0")
        stop = pipe._stop_check()
        ids = pipe.tokenizer("it is red###", add_special_tokens=False)["input_ids"]
        assert stop(ids) and not stop(ids[:-1] if len(ids) > 1 else [])
    finally:
        pipe.template = old


def test_a_registered_template_is_used_by_name():
    from videollama.templates import TEMPLATES, Template, get_template, register_template

    def render(system, turns):
        return system + "".join(f"<q>{q}</q>" + (f"<a>{a}</a>" if a is not None else "<a>") for q, a in turns)

    try:
        register_template(Template("tagged", default_system="S", stop_strings=("</a>",), stop_at_eos=True,
                                   renderer=render))
        template = get_template("tagged")
        assert template.render("S", [("hi", "yo"), ("again", None)]) == "S<q>hi</q><a>yo</a><q>again</q><a>"
        assert template.clean_answer(" fine </a><q>more") == "fine"
    finally:
        TEMPLATES.pop("tagged", None)
    with pytest.raises(ValueError, match="unknown template 'tagged'"):
        get_template("tagged")


def test_attach_media_tokens_records_the_ids_and_the_processor_only_checks(tiny_tokenizer):
    from videollama.presets import tiny
    from videollama.processor import attach_media_tokens
    from videollama.tokenizer import AUDIO_PLACEHOLDER, IMAGE_PLACEHOLDER

    config = tiny(vocab_size=tiny_tokenizer.vocab_size)
    with pytest.raises(ValueError, match="no placeholder ids; call videollama.processor.attach_media_tokens"):
        Processor(tiny_tokenizer, config)  # a new config: nothing is recorded behind the caller's back
    assert (config.image_token_id, config.audio_token_id) == (None, None)
    ids = attach_media_tokens(tiny_tokenizer, config)
    assert ids == (config.image_token_id, config.audio_token_id)
    assert ids == tuple(tiny_tokenizer.convert_tokens_to_ids([IMAGE_PLACEHOLDER, AUDIO_PLACEHOLDER]))
    Processor(tiny_tokenizer, config)  # agrees now
    config.audio_token_id += 1
    with pytest.raises(ValueError, match="tokenizer maps placeholders to"):
        attach_media_tokens(tiny_tokenizer, config)
    with pytest.raises(ValueError, match="tokenizer maps placeholders to"):
        Processor(tiny_tokenizer, config)
