"""What the audio branch is said to understand, and the notice when a video has no audio track (CLI, API, web)."""

from __future__ import annotations

import httpx
import pytest

from media_fixtures import make_numbered_video
from serve_helpers import running_server

NO_AUDIO_NOTICE = "no audio track found: answering from the frames only"


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("scope")
    make_numbered_video(root / "silent.mp4", 16, fps=8)
    make_numbered_video(root / "av.mp4", 16, fps=8, with_audio=True)
    return root


def test_web_demo_says_what_the_audio_branch_hears(tiny_pipeline):
    from videollama.serve.web import AUDIO_SCOPE, build_demo

    intro = next(b for b in build_demo(tiny_pipeline, examples=[]).blocks.values()
                 if getattr(b, "elem_id", None) == "vl-intro")
    assert AUDIO_SCOPE in intro.value
    assert "sound events and their sources" in AUDIO_SCOPE and "does not understand speech" in AUDIO_SCOPE


def test_cli_says_when_a_video_has_no_audio_track(tiny_model_dir, clips, capsys):
    from videollama.cli import main

    code = main(["chat", str(clips / "silent.mp4"), "What happens?", "--model", str(tiny_model_dir), "--greedy",
                 "--max-new-tokens", "2"])
    assert code == 0
    assert f"[{NO_AUDIO_NOTICE}]" in capsys.readouterr().err.splitlines()


def test_api_says_when_a_video_has_no_audio_track(tiny_pipeline, clips):
    from videollama.serve.api import create_app
    from videollama.serve.settings import ServeSettings

    app = create_app(tiny_pipeline, ServeSettings(model_name="m", media_root=clips, timeout_s=60, default_max_tokens=2))

    def ask(name: str) -> httpx.Response:
        body = {"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": name}},
                                                          {"type": "text", "text": "What happens?"}]}],
                "temperature": 0, "max_tokens": 2}
        return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)

    with running_server(app) as url:
        silent, av = ask("silent.mp4"), ask("av.mp4")
    assert silent.status_code == 200 and av.status_code == 200, silent.text + av.text
    assert silent.headers["x-videollama-notice"] == NO_AUDIO_NOTICE
    assert "x-videollama-notice" not in av.headers
