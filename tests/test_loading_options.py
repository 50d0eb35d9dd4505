"""--device-map / --load-in on chat, serve, web and eval: parsing, one shared loader, one-line errors on CPU.

Everything here runs without a GPU. The CUDA-only options must fail at once with one ``error: ...`` line
and exit status 2; the transformers/accelerate loading path they use is checked on the CPU through
``load_with_separate_llm`` with ``device_map={"": "cpu"}`` (same greedy answer as the plain load).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest
import torch

from media_fixtures import make_numbered_video
from videollama import cli
from videollama.model import loading
from videollama.engine import GenerationConfig
from videollama.inference import MediaOptions, Pipeline

MODEL_COMMANDS = ("chat", "serve", "web", "eval")
GREEDY = GenerationConfig(max_new_tokens=6, do_sample=False)


def _parser() -> argparse.ArgumentParser:
    return cli.build_parser()[0]


def _argv(command: str, *extra: str, model: str = "tiny") -> list[str]:
    positional = {"chat": ["clip.mp4", "what?"], "serve": [], "web": [], "eval": ["synthav", "--data", "data"]}
    return [command, *positional[command], "--model", model, *extra]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_numbered_video(tmp_path_factory.mktemp("clip") / "clip.mp4", 16, fps=8)


@pytest.fixture
def no_cuda(monkeypatch):
    """This process behaves as a machine without a GPU, whatever it has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# ------------------------------------------------------------------ parsing and the shared helper
@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_every_model_command_has_the_loading_options(command):
    parser = _parser()
    args = parser.parse_args(_argv(command, "--device", "cuda:1", "--dtype", "fp16", "--device-map", "auto",
                                   "--load-in", "4bit"))
    assert (args.device, args.dtype, args.device_map, args.load_in) == ("cuda:1", "fp16", "auto", "4bit")
    plain = parser.parse_args(_argv(command))
    assert (plain.device, plain.dtype, plain.device_map, plain.load_in) == ("cpu", None, None, None)
    for bad in (["--load-in", "16bit"], ["--device-map", "balanced"]):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(_argv(command, *bad))
        assert exit_info.value.code == 2


def test_model_load_kwargs_maps_the_options_to_from_pretrained():
    parser = _parser()
    args = parser.parse_args(_argv("chat", "--device", "cuda:1", "--dtype", "bf16", "--device-map", "auto",
                                   "--load-in", "8bit", "--template", "vicuna_v0"))
    assert cli.model_load_kwargs(args) == {"device": "cuda:1", "dtype": torch.bfloat16, "template": "vicuna_v0",
                                           "device_map": "auto", "quantization": "8bit"}
    assert cli.model_load_kwargs(parser.parse_args(_argv("serve", "--load-in", "4bit", "--dtype", "fp16"))) == {
        "device": "cpu", "dtype": torch.float16, "template": None, "device_map": None, "quantization": "4bit"}
    assert cli.model_load_kwargs(parser.parse_args(_argv("eval"))) == {
        "device": "cpu", "dtype": None, "template": None, "device_map": None, "quantization": None}


class _Loaded(Exception):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_all_four_commands_load_through_the_same_helper(command, tiny_model_dir, monkeypatch, tmp_path):
    calls = []

    def fake_from_pretrained(directory, **kwargs):
        calls.append((directory, kwargs))
        raise _Loaded

    monkeypatch.setattr(Pipeline, "from_pretrained", staticmethod(fake_from_pretrained))
    monkeypatch.chdir(tmp_path)
    args = _parser().parse_args(_argv(command, "--device", "cuda:0", "--dtype", "fp16", "--load-in", "8bit",
                                      model=str(tiny_model_dir)))
    handler = cli.build_parser()[1][command]
    with pytest.raises(_Loaded):
        handler(args)
    expected = {"device": "cuda:0", "dtype": torch.float16, "template": None, "device_map": None,
                "quantization": "8bit"}
    if command in ("serve", "web"):
        expected["cache_size"] = 64
    assert calls == [(tiny_model_dir, expected)]


# ------------------------------------------------------------------ Pipeline.from_pretrained
def test_pipeline_default_path_does_not_use_load_for_inference(tiny_model_dir, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("load_for_inference called without device_map/quantization")

    monkeypatch.setattr(loading, "load_for_inference", refuse)
    pipe = Pipeline.from_pretrained(tiny_model_dir, cache_size=3)
    assert pipe._cache_size == 3 and pipe.model.dtype == torch.float32


def test_pipeline_passes_loading_options_to_load_for_inference(tiny_model_dir, monkeypatch):
    seen = {}

    def record(directory, **kwargs):
        seen.update(kwargs, directory=directory)
        raise _Loaded

    monkeypatch.setattr(loading, "load_for_inference", record)
    with pytest.raises(_Loaded):
        Pipeline.from_pretrained(tiny_model_dir, device="cuda:1", dtype=torch.float16, device_map="auto",
                                 quantization="4bit")
    assert seen == {"directory": tiny_model_dir, "device": "cuda:1", "dtype": torch.float16, "device_map": "auto",
                    "quantization": "4bit", "with_audio": None, "with_vision": None}


@pytest.mark.parametrize("options", [{"quantization": "8bit"}, {"quantization": "4bit"}, {"device_map": "auto"},
                                     {"device_map": "auto", "quantization": "8bit"}])
def test_cuda_only_options_fail_at_once_without_cuda(options, no_cuda, monkeypatch):
    monkeypatch.setattr(loading, "load_with_separate_llm", lambda *a, **k: pytest.fail("went on loading"))
    with pytest.raises(loading.LoadingError) as err:
        Pipeline.from_pretrained("no-such-folder", **options)  # fails before reading anything
    message = str(err.value)
    assert "\n" not in message and "needs a CUDA GPU" in message and "--device cpu" in message
    assert isinstance(err.value, ValueError)  # what cli.main turns into one line and status 2


# ------------------------------------------------------------------ the command line on a CPU-only machine
def _cli(*args):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # no GPU visible, whatever this machine has
    return subprocess.run([sys.executable, "-m", "videollama", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def _one_error_line(result) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.slow
def test_chat_load_in_8bit_on_cpu_is_one_error_line(tiny_model_dir, clip):
    line = _one_error_line(_cli("chat", clip, "q", "--model", tiny_model_dir, "--load-in", "8bit"))
    assert "8bit quantization needs a CUDA GPU" in line
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        assert "bitsandbytes is not installed" in line


@pytest.mark.slow
def test_chat_device_map_auto_on_cpu_is_one_error_line(tiny_model_dir, clip):
    # load_for_inference refuses device maps without CUDA (its non-LLM parts go to a GPU), rather than
    # silently mapping everything to the CPU: the plain --device cpu load is the CPU path.
    line = _one_error_line(_cli("chat", clip, "q", "--model", tiny_model_dir, "--device-map", "auto"))
    assert "device_map='auto' needs a CUDA GPU" in line and "--device cpu" in line


@pytest.mark.parametrize("command", ["serve", "web", "eval"])
def test_other_commands_give_the_same_one_line_error(command, tiny_model_dir, no_cuda, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    status = cli.main(_argv(command, "--load-in", "4bit", model=str(tiny_model_dir)))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert status == 2
    assert len(lines) == 1 and lines[0].startswith("error: 4bit quantization needs a CUDA GPU"), lines


@pytest.mark.slow
def test_eval_refuses_device_map_under_torchrun(tiny_model_dir, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.chdir(tmp_path)
    assert cli.main(_argv("eval", "--device-map", "auto", model=str(tiny_model_dir))) == 2
    assert capsys.readouterr().err.startswith("error: --device-map auto spreads one model over all GPUs")


# ------------------------------------------------------------------ the device-map loading path, on the CPU
def test_separate_llm_load_gives_the_same_greedy_answer(tiny_model_dir, clip):
    from transformers import AutoTokenizer

    plain = Pipeline.from_pretrained(tiny_model_dir)
    model = loading.load_with_separate_llm(tiny_model_dir, device=torch.device("cpu"), dtype=None,
                                           device_map={"": "cpu"})
    mapped = Pipeline(model, AutoTokenizer.from_pretrained(str(tiny_model_dir)))
    a, b = plain.model.state_dict(), mapped.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    options = MediaOptions(num_frames=4)
    assert mapped.chat(clip, options=options).ask("what?", GREEDY) == plain.chat(clip, options=options).ask("what?", GREEDY)


def test_separate_llm_load_without_audio(tiny_model_dir):
    from videollama.model import VideoLlama

    model = loading.load_with_separate_llm(tiny_model_dir, device=torch.device("cpu"), dtype=None,
                                           device_map={"": "cpu"}, with_audio=False)
    reference = VideoLlama.from_pretrained(tiny_model_dir, with_audio=False)
    assert not model.config.with_audio and model.state_dict().keys() == reference.state_dict().keys()
