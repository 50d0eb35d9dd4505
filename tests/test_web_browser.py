"""The Gradio web demo in a real browser: Debian chromium driven by Playwright, the server on loopback.

The demo is the one ``videollama web`` serves (``build_demo`` + ``launch_demo`` from
``videollama/serve/web.py``, default examples included), running in a thread of this process on the
tiny random model, so the expected answer can be computed with the very same pipeline. The browser
uploads a generated clip, switches on greedy decoding, asks a question and waits for the streamed
answer, which must equal the pipeline's own greedy answer to the same conversation. The chat's trash
icon must start a new conversation (the same question gets the same answer, not a second turn's),
Clear must empty the chat and the upload, an empty question must raise the demo's error toast, a
screenshot is saved, no component may offer Gradio's share-to-Hugging-Face button, and every request
the page made must have gone to the loopback server (the "offline, no CDN" claim).

chromium and the ``playwright`` package are required: the Makefile installs both, so a missing one is a
failure, not a skip. ``VIDEOLLAMA_CHROMIUM`` overrides the browser path (default ``/usr/bin/chromium``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from media_fixtures import make_numbered_video
from serve_helpers import free_port, wait_until

CHROMIUM = os.environ.get("VIDEOLLAMA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
QUESTION = "Which numbers appear?"  # the tiny model answers it differently as a second turn
MAX_TOKENS = 48
FRAMES = 8  # the demo's default "Frames sampled from a video"
# Upper bounds only (a run takes 25-35 s on 2 busy cores): generous, so that a loaded machine is not a failure.
PAGE_TIMEOUT_MS = 60_000
ANSWER_TIMEOUT_S = 60.0
MIN_SCREENSHOT_BYTES = 10 * 1024

BOT = "#vl-chatbot [data-testid=bot]"
USER = "#vl-chatbot [data-testid=user]"
ERROR_TOAST = "[data-testid=toast-body].error"

# Records every text the last bot message shows, as it changes (proves the answer streams in).
WATCH_BOT_TEXT = """() => {
  window.__botTexts = [];
  const chat = document.querySelector('#vl-chatbot');
  const record = () => {
    const bots = chat.querySelectorAll('[data-testid=bot]');
    const text = bots.length ? bots[bots.length - 1].innerText : '';
    const seen = window.__botTexts;
    if (text && seen[seen.length - 1] !== text) seen.push(text);
  };
  new MutationObserver(record).observe(chat, {subtree: true, childList: true, characterData: true});
}"""


def _sync_playwright():
    """Playwright's sync entry point, after checking that it and chromium are there (else: FAIL, not skip)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        pytest.fail(f"the playwright Python package is missing ({err}); run `make install` (it installs the "
                    "[test] extra) - this test drives a real browser and is not optional", pytrace=False)
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"chromium not found at {CHROMIUM}; run `make system-deps` (apt-get install chromium) or set "
                    "VIDEOLLAMA_CHROMIUM - this test drives a real browser and is not optional", pytrace=False)
    return sync_playwright


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_numbered_video(tmp_path_factory.mktemp("web-clip") / "clip.mp4", 16, fps=8, size=(160, 128),
                               with_audio=True, faststart=True)


@pytest.fixture(scope="module")
def web_url(tiny_pipeline):
    from videollama.serve.web import build_demo, launch_demo

    port = free_port()
    demo = build_demo(tiny_pipeline)  # exactly what `videollama web` builds (default examples included)
    try:
        _, url, share = launch_demo(demo, host="127.0.0.1", port=port, block=False)
        assert share is None and url.startswith(f"http://127.0.0.1:{port}")
        yield url
    finally:
        demo.close()


def expected_answer(pipeline, clip: Path, history: tuple[tuple[str, str], ...] = ()) -> str:
    """What the demo's ``respond`` computes for this upload with greedy decoding: same options, same stream."""
    from videollama.engine import GenerationConfig
    from videollama.inference import MediaOptions
    from videollama.serve.web import DEFAULT_MAX_DURATION_S

    options = MediaOptions(num_frames=FRAMES, use_audio=bool(pipeline.model.config.with_audio),
                           max_duration=DEFAULT_MAX_DURATION_S)
    media = pipeline.encode_media(clip, options)
    request = pipeline.request(media, [*history, (QUESTION, None)],
                               GenerationConfig(max_new_tokens=MAX_TOKENS, do_sample=False))
    return "".join(pipeline.stream(request)).strip()


@pytest.mark.slow
def test_web_demo_in_chromium(web_url, tiny_pipeline, clip, tmp_path):
    sync_playwright = _sync_playwright()
    expected = expected_answer(tiny_pipeline, clip)  # before the demo's worker uses the pipeline
    assert expected, "the tiny model's greedy answer is empty: pick another question"
    # the same question as a second turn: what the chat would answer if it kept the first turn
    follow_up = expected_answer(tiny_pipeline, clip, ((QUESTION, expected),))
    assert _normalise(follow_up) != _normalise(expected), "pick a question whose follow-up answer differs"
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        try:
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            page.on("request", lambda r: requests.append(r.url))
            page.on("websocket", lambda ws: requests.append(ws.url))
            page.goto(web_url)
            page.wait_for_selector("#vl-question textarea")
            assert page.title() == "Video-LLaMA"
            # no Gradio "share" button anywhere (it uploads to huggingface.co)
            config = page.evaluate("window.gradio_config")
            sharing = [c.get("props", {}).get("elem_id") or c["type"] for c in config["components"]
                       if "share" in (c.get("props", {}).get("buttons") or [])]
            assert not sharing, f"components with a share-to-Hugging-Face button: {sharing}"

            # upload: the video player replaces the drop zone once the file is on the server
            page.set_input_files("#vl-video input[type=file]", str(clip))
            page.wait_for_selector("#vl-video video")

            # greedy decoding and a short answer, in the (closed) settings accordion
            page.get_by_text("Generation settings").click()
            page.check("#vl-greedy input[type=checkbox]")
            max_tokens = page.locator("#vl-max-tokens input[type=number]")
            max_tokens.fill(str(MAX_TOKENS))
            max_tokens.press("Enter")
            assert page.input_value("#vl-max-tokens input[type=range]") == str(MAX_TOKENS)

            page.evaluate(WATCH_BOT_TEXT)
            page.fill("#vl-question textarea", QUESTION)
            page.click("#vl-send")
            page.wait_for_selector(BOT)

            def answer_shown() -> str:
                texts = page.locator(BOT).all_inner_texts()
                return _normalise(texts[-1]) if texts else ""

            def wait_for_answer(want: str) -> None:
                try:
                    wait_until(lambda: answer_shown() == _normalise(want) or page.locator(ERROR_TOAST).count() > 0,
                               ANSWER_TIMEOUT_S, "the streamed answer")
                except AssertionError:
                    pytest.fail(f"the chat shows {answer_shown()!r}, expected the greedy answer {want!r}")
                assert page.locator(ERROR_TOAST).count() == 0, page.locator(ERROR_TOAST).all_inner_texts()

            wait_for_answer(expected)
            assert page.locator(USER).all_inner_texts() == [QUESTION]
            assert page.input_value("#vl-question textarea") == ""  # the demo empties the box on send
            shown = [_normalise(t) for t in page.evaluate("window.__botTexts")]
            assert shown and shown[-1] == _normalise(expected)
            assert all(_normalise(expected).startswith(t) for t in shown), shown  # it grew, never rewrote itself

            screenshot = tmp_path / "web-demo.png"
            page.screenshot(path=str(screenshot), full_page=True)
            assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert screenshot.stat().st_size > MIN_SCREENSHOT_BYTES, screenshot.stat().st_size

            # the chat's own trash icon starts a new conversation about the same clip: the same question
            # gets the first answer again, not the follow-up answer of a hidden second turn
            page.click("#vl-chatbot button[aria-label=Clear]")
            wait_until(lambda: page.locator(f"{BOT}, {USER}").count() == 0, ANSWER_TIMEOUT_S, "the chat to empty")
            page.fill("#vl-question textarea", QUESTION)
            page.click("#vl-send")
            page.wait_for_selector(BOT)
            wait_for_answer(expected)
            assert page.locator(USER).all_inner_texts() == [QUESTION]

            # Clear empties the chat, the question and the upload
            page.click("#vl-clear")
            wait_until(lambda: page.locator(f"{BOT}, {USER}").count() == 0, ANSWER_TIMEOUT_S, "the chat to empty")
            wait_until(lambda: page.locator("#vl-video video").count() == 0, ANSWER_TIMEOUT_S, "the upload to clear")

            # an empty question is refused with the demo's own error toast (the error check above is live)
            page.click("#vl-send")
            toast = page.locator(ERROR_TOAST)
            toast.first.wait_for()
            assert "Type a question first" in toast.first.inner_text()
            assert page.locator(f"{BOT}, {USER}").count() == 0
        except BaseException:
            try:  # the page as the failure left it, for whoever reads the report
                page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
                print(f"screenshot of the failure: {tmp_path / 'failure.png'}")
            except Exception:
                pass
            raise
        finally:
            browser.close()

    assert requests and any(url.startswith(web_url) for url in requests)
    outside = sorted({url for url in requests if not url.startswith(("data:", "blob:")) and
                      urlsplit(url).hostname not in LOOPBACK})
    hosts = sorted({str(urlsplit(url).hostname) for url in outside})
    assert not outside, f"the page made requests beyond the loopback server (hosts {hosts}): {outside}"
