"""One base error for what the user can fix; everything else is a bug with its traceback.

The CLI prints a :class:`~videollama.errors.VideoLlamaError` as one ``error:`` line and exits 2, and
shows the traceback and exits 1 for any other exception, a ``ValueError`` from a bug included.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil

import pytest

import videollama
from videollama import cli
from videollama.errors import VideoLlamaError

USER_ERRORS = [
    ("videollama.media.errors", "MediaError"),
    ("videollama.media.errors", "NoAudioError"),
    ("videollama.media.errors", "NoVideoError"),
    ("videollama.config", "ModelConfigError"),
    ("videollama.model.checkpoint", "ModelFolderError"),
    ("videollama.model.loading", "LoadingError"),
    ("videollama.convert.report", "ConversionError"),
    ("videollama.convert.safe_load", "CheckpointReadError"),
    ("videollama.convert.safe_load", "UnsafeCheckpointError"),
    ("videollama.convert.safe_load", "WrongCheckpointError"),
    ("videollama.convert.writer", "NonFiniteTensorError"),
    ("videollama.train.config", "ConfigError"),
    ("videollama.train.data", "DatasetError"),
    ("videollama.train.checkpoint", "TrainingCheckpointError"),
    ("videollama.train.checkpoint", "NoUsableCheckpoint"),
    ("videollama.engine", "GenerationError"),
    ("videollama.eval.base", "DataError"),
    ("videollama.eval.runner", "EvalError"),
    ("videollama.eval.judge", "JudgeError"),
    ("videollama.errors", "UsageError"),
]


@pytest.mark.parametrize("module,name", USER_ERRORS, ids=[name for _, name in USER_ERRORS])
def test_user_errors_share_one_base(module, name):
    assert issubclass(getattr(importlib.import_module(module), name), VideoLlamaError)
    assert videollama.VideoLlamaError is VideoLlamaError


def test_no_two_error_classes_share_a_name():
    seen: dict[str, str] = {}
    skip = ("videollama.vllm",)  # needs the vLLM venv
    for info in pkgutil.walk_packages(videollama.__path__, "videollama."):
        if info.name.startswith(skip) or info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == info.name:
                assert seen.setdefault(name, info.name) == info.name, f"{name} in {seen[name]} and {info.name}"


def test_a_user_error_is_one_line_and_exit_2(monkeypatch, capsys):
    from videollama.train.data import DatasetError

    def no_records(args):
        raise DatasetError("webvid: no usable records (12 skipped: 12 missing video)")

    monkeypatch.setattr(cli, "cmd_info", no_records)
    assert cli.main(["info", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err == "error: webvid: no usable records (12 skipped: 12 missing video)\n"


def test_a_bug_shows_its_traceback_and_exit_1(monkeypatch, capsys):
    def buggy(args):
        raise ValueError("an index went wrong")  # a builtin error is a bug, not the user's mistake

    monkeypatch.setattr(cli, "cmd_info", buggy)
    assert cli.main(["info", "tiny"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in buggy" in err
    assert "ValueError: an index went wrong" in err
    assert err.rstrip().endswith("this is a bug in videollama, please report it")


def test_model_config_types_are_checked(tmp_path):
    from videollama.config import ModelConfigError, VideoLlamaConfig
    from videollama.defaults import SHIPPED_MODEL as SHIPPED_MODEL_DIR

    data = json.loads((SHIPPED_MODEL_DIR / "config.json").read_text())
    data["videollama"]["vision"]["num_layers"] = "3"
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ModelConfigError, match=r"config.json: vision.num_layers: expected an integer, got '3'"):
        VideoLlamaConfig.load(path)
    data["videollama"]["vision"]["num_layers"] = 3
    data["videollama"]["with_audio"] = "yes"
    path.write_text(json.dumps(data))
    with pytest.raises(ModelConfigError, match="with_audio: expected true/false"):
        VideoLlamaConfig.load(path)


def test_cli_reports_a_bad_model_config_as_the_users(tmp_path, capsys):
    from videollama.defaults import SHIPPED_MODEL as SHIPPED_MODEL_DIR

    data = json.loads((SHIPPED_MODEL_DIR / "config.json").read_text())
    data["videollama"]["max_frames"] = 32.5
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(data))
    assert cli.main(["info", str(folder)]) == 2
    assert "max_frames: expected an integer, got 32.5" in capsys.readouterr().err
