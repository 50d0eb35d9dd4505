"""The Jinja chat template vLLM renders for a Video-LLaMA folder, built from ``videollama/templates.py``.

vLLM turns OpenAI messages into a prompt with the tokenizer's chat template. Our folders carry none, so
the plugin registers this one as vLLM's fallback for ``model_type: videollama`` (``--chat-template``
still wins). It reproduces what ``videollama serve`` builds (``serve/api.py`` + ``Pipeline.prompt_ids``):

* the system prompt the official demos use for the media kind and the folder's branches
  (``templates.system_for``, evaluated here in Python for each kind), or the system message;
* the media preamble (``templates.media_message``) at the start of the first user message, joined to
  the question by one space; the media may sit in any user message, as with our own server;
* consecutive user messages and the text parts of one message joined by a newline, and stripped;
* the ``llama_2`` or ``vicuna_v0`` layout (``render_llama_2`` / ``render_vicuna_v0``), BOS first.

Two facts only the decoded file can tell are filled in later by the multimodal processor
(``prompt.finish_prompt``): the frame timestamps of a video, and whether it has a sound track (then
the audio-visual preamble, and the system prompt ``system_for`` gives a video with sound, replace the
video ones).

Every literal is taken from ``videollama.templates`` (JSON-quoted, which Jinja reads as a string
literal), so the two cannot drift apart; ``tests/test_vllm_plugin.py`` renders both and compares.
"""

from __future__ import annotations

import json

from ..templates import AUDIO_SENTENCE, IMAGE_MESSAGE, VIDEO_MESSAGE, get_template, system_for

# Jinja fragments shared by both layouts: the system message, the media kind and the turns.
_COLLECT = """\
{%- set ns = namespace(system=none, kind=none, user=none, turns=[], texts=[]) -%}
{%- for message in messages -%}
  {%- set ns.texts = [] -%}
  {%- if message.content is string -%}
    {%- set ns.texts = [message.content] -%}
  {%- elif message.content is not none -%}
    {%- for part in message.content -%}
      {%- if part.type == 'text' -%}
        {%- set ns.texts = ns.texts + [part.text] -%}
      {%- elif part.type in ['image', 'video', 'audio'] and message.role == 'user' -%}
        {%- if ns.kind is not none -%}
          {{- raise_exception('this model takes one media item (a video, an image or an audio clip) per conversation') -}}
        {%- endif -%}
        {%- set ns.kind = part.type -%}
      {%- else -%}
        {{- raise_exception('a ' ~ message.role ~ ' message may hold text only') -}}
      {%- endif -%}
    {%- endfor -%}
  {%- endif -%}
  {%- set text = ns.texts | join('\\n') -%}
  {%- if message.role in ['system', 'developer'] -%}
    {%- set ns.system = text if ns.system is none else ns.system ~ '\\n' ~ text -%}
  {%- elif message.role == 'user' -%}
    {%- set ns.user = [text] if ns.user is none else ns.user + [text] -%}
  {%- else -%}
    {%- if ns.user is none -%}
      {{- raise_exception('an assistant message must follow a user message') -}}
    {%- endif -%}
    {%- set ns.turns = ns.turns + [[ns.user | join('\\n') | trim, text | trim]] -%}
    {%- set ns.user = none -%}
  {%- endif -%}
{%- endfor -%}
{%- if ns.user is none -%}
  {{- raise_exception('the last message must come from the user') -}}
{%- endif -%}
{%- set ns.turns = ns.turns + [[ns.user | join('\\n') | trim, none]] -%}
{%- set preambles = {'image': IMAGE_MESSAGE, 'video': VIDEO_MESSAGE, 'audio': AUDIO_SENTENCE} -%}
{%- set preamble = preambles[ns.kind] if ns.kind is not none else '' -%}
"""

_SYSTEM = """\
{%- if ns.system is none -%}
  {%- set ns.system = SYSTEMS[ns.kind if ns.kind is not none else 'text'] -%}
{%- endif -%}
"""

_LLAMA_2 = """\
{{- bos_token -}}
{%- for user, assistant in ns.turns -%}
  {%- if loop.first -%}
    {%- set user = (preamble ~ ' ' ~ user) if preamble else user -%}
    {{- '[INST] <<SYS>>\\n' ~ ns.system ~ '\\n<</SYS>>\\n\\n' ~ user ~ ' [/INST]' -}}
  {%- else -%}
    {{- '<s>[INST] ' ~ user ~ ' [/INST]' -}}
  {%- endif -%}
  {%- if assistant is not none -%}
    {{- ' ' ~ assistant ~ ' </s>' -}}
  {%- endif -%}
{%- endfor -%}
"""

_VICUNA_V0 = """\
{{- bos_token ~ ns.system ~ '###' -}}
{%- for user, assistant in ns.turns -%}
  {%- if loop.first -%}
    {%- set user = (preamble ~ ' ' ~ user) if preamble else user -%}
  {%- endif -%}
  {{- 'Human: ' ~ user ~ '###Assistant:' -}}
  {%- if assistant is not none -%}
    {{- ' ' ~ assistant ~ '###' -}}
  {%- endif -%}
{%- endfor -%}
"""

_LAYOUTS = {"llama_2": _LLAMA_2, "vicuna_v0": _VICUNA_V0}


def chat_template(template: str, *, audio_branch: bool) -> str:
    """The Jinja source for one of our templates (``llama_2`` or ``vicuna_v0``) and a folder with or without
    the audio branch (the official demos' system prompts depend on it)."""
    if template not in _LAYOUTS:
        raise ValueError(f"no vLLM chat template for {template!r}; choose one of {sorted(_LAYOUTS)}")
    rules = get_template(template)
    systems = {kind: system_for(rules, video=kind == "video", image=kind == "image", audio=kind == "audio",
                                system=None, audio_branch=audio_branch)
               for kind in ("text", "image", "video", "audio")}
    constants = {"IMAGE_MESSAGE": IMAGE_MESSAGE, "VIDEO_MESSAGE": VIDEO_MESSAGE, "AUDIO_SENTENCE": AUDIO_SENTENCE,
                 "SYSTEMS": systems}
    header = "".join(f"{{%- set {name} = {json.dumps(value)} -%}}\n" for name, value in constants.items())
    return header + _COLLECT + _SYSTEM + _LAYOUTS[template]
