"""Fixtures for the evaluation tests: tiny benchmarks in their real file layouts, a deterministic
answerer that really reads the videos, and a rule-based OpenAI-compatible judge over HTTP.

* Every video is a real, tiny, solid-colour clip (PyAV, H.264 .mp4 / MPEG-4 .avi / .mkv). The
  answerer decodes the first frame and names its colour, so a question answered right proves
  that the reader resolved the question's video id to the right file.
* :class:`JudgeServer` serves ``/v1/chat/completions`` and ``/v1/models`` on 127.0.0.1 (random
  port) with the stdlib HTTP server. Rule: ``yes``/5 when the reference answer occurs in the
  prediction, else ``no``/1. Faults by reference answer: "green" -> HTTP 500 on the first try,
  "blue" -> a chatty, unparseable reply on the first try, "yellow" -> a fenced dict with a 4.8
  score; questions containing "how many" always get a malformed reply (a permanent failure).
"""

from __future__ import annotations

import json
import re
import socket
import threading
from dataclasses import dataclass
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import av
import numpy as np

COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 230, 40)}
SIZE, FRAMES, FPS = 32, 3, 8
CODECS = {".mp4": "libx264", ".mkv": "libx264", ".avi": "mpeg4"}


def write_video(path: Path, color: str) -> Path:
    """A FRAMES-frame SIZE x SIZE clip filled with one of COLORS."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = np.empty((SIZE, SIZE, 3), dtype=np.uint8)
    frame[:] = COLORS[color]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(CODECS[path.suffix], rate=FPS)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, FPS)
        for i in range(FRAMES):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts = i
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


_color_cache: dict[str, str] = {}


def color_of(path: Path) -> str:
    key = str(path)
    if key not in _color_cache:
        with av.open(key) as container:
            frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
        mean = frame.reshape(-1, 3).mean(axis=0)
        _color_cache[key] = min(COLORS, key=lambda c: float(((mean - np.array(COLORS[c])) ** 2).sum()))
    return _color_cache[key]


def color_answerer(batch):
    """Deterministic stand-in for the model: names the colour of each item's video."""
    return [f"The object is {color_of(item.video_path)}." for item in batch]


# ------------------------------------------------------------------------------- benchmarks
@dataclass(frozen=True)
class Q:
    qid: str
    clip: int  # index into CLIPS
    question: str
    answer: str
    anet_type: int  # ActivityNet-QA type code


CLIPS = ["red", "green", "blue", "yellow", "red"]  # the last clip's file is never written (missing video)
MISSING_CLIP = 4
QUESTIONS = [
    Q("q0", 0, "what color is the ball?", "red", 4),
    Q("q1", 1, "what color is the ball?", "green", 4),
    Q("q2", 2, "what color is the car?", "blue", 4),
    Q("q3", 3, "what is the color of the box?", "yellow", 4),
    Q("q4", 0, "who is in the room?", "man", 5),
    Q("q5", 1, "is the light on?", "yes", 3),
    Q("q6", 2, "how many cars are there?", "2", 7),
    Q("q7", 4, "what color is the cup?", "red", 4),  # its video is missing
]
N_ANSWERABLE = sum(q.clip != MISSING_CLIP for q in QUESTIONS)
EXPECTED_CONTAINS = {"q0", "q1", "q2", "q3"}  # the colour answerer gets exactly these right


def youtube_name(clip: int) -> str:
    return f"-clip{clip}Yt_{clip}_{clip + 5}"


def anet_name(clip: int) -> str:
    return f"Ab-{clip}xYz_{clip}"


def _dump(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value), encoding="utf-8")


def _videos(root: Path, name, suffix: str) -> None:
    for clip, color in enumerate(CLIPS):
        if clip != MISSING_CLIP:
            write_video(root / (name(clip) + suffix), color)


def make_msvd_xudejing(root: Path) -> Path:
    """test_qa.json with numeric video ids, youtube_mapping.txt, YouTubeClips/<name>.avi."""
    _dump(root / "test_qa.json", [{"answer": q.answer, "id": int(q.qid[1:]), "question": q.question,
                                    "video_id": q.clip + 1} for q in QUESTIONS])
    (root / "youtube_mapping.txt").write_text(
        "".join(f"{youtube_name(c)} vid{c + 1}\n" for c in range(len(CLIPS))), encoding="utf-8")
    _videos(root / "YouTubeClips", youtube_name, ".avi")
    return root


def make_msvd_videochatgpt(root: Path) -> Path:
    _dump(root / "test_q.json", [{"video_name": youtube_name(q.clip), "question_id": f"v_{q.qid}",
                                   "question": q.question} for q in QUESTIONS])
    _dump(root / "test_a.json", [{"answer": q.answer, "type": 0, "question_id": f"v_{q.qid}"} for q in QUESTIONS])
    _videos(root / "videos", youtube_name, ".avi")
    return root


def make_msrvtt_xudejing(root: Path) -> Path:
    _dump(root / "test_qa.json", [{"answer": q.answer, "category_id": 3, "id": int(q.qid[1:]) + 100,
                                    "question": q.question, "video_id": 7010 + q.clip} for q in QUESTIONS])
    _videos(root / "video", lambda c: f"video{7010 + c}", ".mp4")
    return root


def make_msrvtt_videochatgpt(root: Path) -> Path:
    _dump(root / "test_q.json", [{"video_name": f"video{7010 + q.clip}", "question_id": f"v_{q.qid}",
                                   "question": q.question} for q in QUESTIONS])
    _dump(root / "test_a.json", [{"answer": q.answer, "type": 1, "question_id": f"v_{q.qid}"} for q in QUESTIONS])
    _videos(root / "videos" / "all", lambda c: f"video{7010 + c}", ".mp4")
    return root


def make_activitynet(root: Path, *, official: bool = False) -> Path:
    """Video-ChatGPT package (test_*.json + all_test/v_<name>.mp4), or the official repo's
    dataset/test_*.json with the answers in another order and videos as videos/v_<name>.mkv."""
    ann = root / "dataset" if official else root
    _dump(ann / "test_q.json", [{"video_name": anet_name(q.clip), "question": q.question,
                                  "question_id": f"{anet_name(q.clip)}_{i}"} for i, q in enumerate(QUESTIONS)])
    answers = [{"answer": q.answer, "type": q.anet_type, "question_id": f"{anet_name(q.clip)}_{i}"}
               for i, q in enumerate(QUESTIONS)]
    _dump(ann / "test_a.json", answers[::-1] if official else answers)
    folder, suffix = ("videos", ".mkv") if official else ("all_test", ".mp4")
    _videos(root / folder, lambda c: f"v_{anet_name(c)}", suffix)
    return root


def make_synthav(root: Path) -> Path:
    families = ["static", "static", "static", "static", "audio", "temporal", "audio-visual", "static"]
    records = []
    for q, family in zip(QUESTIONS, families):
        choices = list(COLORS) if q.answer in COLORS else [q.answer, "other"]
        records.append({"id": f"syn-{q.qid}", "video": f"videos/clip{q.clip}.mp4", "question": q.question,
                        "answer": q.answer, "family": family, "choices": choices, "chance": 1 / len(choices)})
    _dump(root / "qa" / "test.json", records)
    _videos(root / "videos", lambda c: f"clip{c}", ".mp4")
    return root


LAYOUTS = {
    ("msvd-qa", "xudejing"): make_msvd_xudejing,
    ("msvd-qa", "video-chatgpt"): make_msvd_videochatgpt,
    ("msrvtt-qa", "xudejing"): make_msrvtt_xudejing,
    ("msrvtt-qa", "video-chatgpt"): make_msrvtt_videochatgpt,
    ("activitynet-qa", "activitynet-qa"): make_activitynet,
    ("synthav", "synthav"): make_synthav,
}


# ------------------------------------------------------------------------------------ judge
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_QA = re.compile(r"Question: (.*)\nCorrect Answer: (.*)\nPredicted Answer: (.*)\n\n")


def judge_rule(question: str, answer: str, pred: str, attempt: int) -> tuple[int, str]:
    """(HTTP status, reply text) for the attempt-th request about this triple."""
    if "how many" in question:
        return 200, "I cannot decide."
    if answer == "green" and attempt == 1:
        return 500, ""
    if answer == "blue" and attempt == 1:
        return 200, "Sure! The prediction looks right to me."
    yes = answer.lower() in pred.lower()
    if answer == "yellow":
        return 200, "```python\n{'pred': 'yes', 'score': 4.8}\n```" if yes else "{'pred': 'no', 'score': 0}"
    return 200, "{'pred': 'yes', 'score': 5}" if yes else "{'pred': 'no', 'score': 1}"


def expected_judgement(question: str, answer: str, pred: str) -> tuple[str, int] | None:
    """What aggregation should count for a triple (None: a judge failure)."""
    if "how many" in question:
        return None
    yes = answer.lower() in pred.lower()
    if answer == "yellow":
        return ("yes", 4) if yes else ("no", 0)
    return ("yes", 5) if yes else ("no", 1)


class JudgeServer:
    """A rule-based OpenAI-compatible judge on a random local port (context manager)."""

    model = "rule-judge"

    def __init__(self):
        self.attempts: dict[tuple[str, str, str], int] = {}
        self.requests = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, payload) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [
                        {"id": server.model, "object": "model", "created": 0, "owned_by": "tests"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                length = int(self.headers.get("Content-Length", "0"))
                request = json.loads(self.rfile.read(length))
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": {"message": "not found"}})
                    return
                match = _QA.search(request["messages"][-1]["content"])
                question, answer, pred = match.groups()
                with server.lock:
                    server.requests += 1
                    key = (question, answer, pred)
                    server.attempts[key] = attempt = server.attempts.get(key, 0) + 1
                status, text = judge_rule(question, answer, pred, attempt)
                if status != 200:
                    self._send(status, {"error": {"message": "internal error", "type": "server_error"}})
                    return
                self._send(200, {
                    "id": "cmpl-test", "object": "chat.completion", "created": 0, "model": request["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> JudgeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
