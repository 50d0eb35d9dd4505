"""Prompts byte-identical to the official demos', for every template x media x model-folder kind.

The expected strings are written out as the official code builds them (``conversation_video.py``:
``Chat.upload_img`` / ``upload_video_without_audio`` / ``upload_video`` append the upload message,
``Chat.ask`` joins the question with one space, ``Conversation.get_prompt`` renders ``SINGLE``
(vicuna, ``"{system}###Human: {msg}###Assistant:"``) or ``LLAMA_2`` (``"[INST] <<SYS>>\\n{system}
\\n<</SYS>>\\n\\n{msg} [/INST]"``, the leading ``<s>`` stripped)); the demos set the system text
after choosing the conversation: ``demo_video.py`` (VL-only folders) the visual text for video
and image, ``demo_audiovideo.py`` (folders with the audio branch) ``""`` for every video and the
visual text for images. The official AV message marks the audio slot with ``<ImageHere>`` too
(embeddings are spliced in order); ours names it ``<AudioHere>``, so the comparison maps that one
marker back.
"""

from __future__ import annotations

import dataclasses

import pytest

from videollama.inference import MediaFeatures, Pipeline

VISUAL = ("You are able to understand the visual content that the user provides. "
          "Follow the instructions carefully and explain your answers in detail.")
STAMPS = "The video contains 8 frames sampled at 0.0, 0.6, 1.3, 2.0, 2.6, 3.3, 4.0, 4.6 seconds. "
AV_UPLOAD = ("Close your eyes, open your ears and you imagine only based on the sound that: <ImageHere>. "
             "                Close your ears, open your eyes and you see that <Video><ImageHere></Video>.  "
             "                Now answer my question based on what you have just seen and heard.")
Q = "What is happening?"

# (template, folder kind, media) -> the official prompt for one question
GOLDEN = {
    ("vicuna_v0", "av", "image"): f"{VISUAL}###Human: <Image><ImageHere></Image>  {Q}###Assistant:",
    ("vicuna_v0", "vl", "image"): f"{VISUAL}###Human: <Image><ImageHere></Image>  {Q}###Assistant:",
    ("vicuna_v0", "vl", "video"): f"{VISUAL}###Human: <Video><ImageHere></Video> {STAMPS} {Q}###Assistant:",
    ("vicuna_v0", "av", "video"): f"###Human: <Video><ImageHere></Video> {STAMPS} {Q}###Assistant:",
    ("vicuna_v0", "av", "video+audio"): f"###Human: {AV_UPLOAD} {Q}###Assistant:",
    ("llama_2", "av", "image"): f"[INST] <<SYS>>\n{VISUAL}\n<</SYS>>\n\n<Image><ImageHere></Image>  {Q} [/INST]",
    ("llama_2", "vl", "image"): f"[INST] <<SYS>>\n{VISUAL}\n<</SYS>>\n\n<Image><ImageHere></Image>  {Q} [/INST]",
    ("llama_2", "vl", "video"): f"[INST] <<SYS>>\n{VISUAL}\n<</SYS>>\n\n<Video><ImageHere></Video> {STAMPS} {Q} [/INST]",
    ("llama_2", "av", "video"): f"[INST] <<SYS>>\n\n<</SYS>>\n\n<Video><ImageHere></Video> {STAMPS} {Q} [/INST]",
    ("llama_2", "av", "video+audio"): f"[INST] <<SYS>>\n\n<</SYS>>\n\n{AV_UPLOAD} {Q} [/INST]",
}


def media(kind: str) -> MediaFeatures:
    if kind == "image":
        return MediaFeatures("image")
    features = MediaFeatures("video", timestamps=STAMPS)
    if kind == "video+audio":
        features.audio = object()  # only its presence matters to the prompt
    return features


def folder_pipeline(tiny_model, tiny_tokenizer, folder: str, template: str) -> Pipeline:
    """The tiny pipeline as an AV folder (both branches) or a VL-only folder (config flag only)."""
    pipe = Pipeline(tiny_model, tiny_tokenizer, template=template)
    config = dataclasses.replace(tiny_model.config, with_audio=folder == "av")
    pipe.model = type("Folder", (), {"config": config})()  # prompt building reads only the config
    return pipe


def official(prompt: str) -> str:
    return prompt.replace("<AudioHere>", "<ImageHere>")


@pytest.mark.parametrize("template,folder,kind", list(GOLDEN), ids=["-".join(key) for key in GOLDEN])
def test_first_turn_prompt_is_the_official_one(tiny_model, tiny_tokenizer, template, folder, kind):
    pipe = folder_pipeline(tiny_model, tiny_tokenizer, folder, template)
    assert official(pipe.prompt_text(media(kind), [(Q, None)])) == GOLDEN[(template, folder, kind)]


@pytest.mark.parametrize("folder", ["av", "vl"])
def test_later_turns_follow_the_official_layout(tiny_model, tiny_tokenizer, folder):
    turns = [(Q, "A dog runs."), ("Why?", None)]
    pipe = folder_pipeline(tiny_model, tiny_tokenizer, folder, "vicuna_v0")
    first = GOLDEN[("vicuna_v0", folder, "video")].removesuffix("###Assistant:")
    assert official(pipe.prompt_text(media("video"), turns)) == f"{first}###Assistant: A dog runs.###Human: Why?###Assistant:"
    pipe = folder_pipeline(tiny_model, tiny_tokenizer, folder, "llama_2")
    first = GOLDEN[("llama_2", folder, "video")]
    assert official(pipe.prompt_text(media("video"), turns)) == f"{first} A dog runs. </s><s>[INST] Why? [/INST]"


def test_an_explicit_system_text_wins(tiny_model, tiny_tokenizer):
    pipe = folder_pipeline(tiny_model, tiny_tokenizer, "av", "llama_2")
    assert pipe.prompt_text(media("image"), [(Q, None)], system="S").startswith("[INST] <<SYS>>\nS\n<</SYS>>")
