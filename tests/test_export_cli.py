"""``videollama export RUN --out DIR`` on a tiny training run, then ``videollama chat`` on the exported folder.

The run is a 4-step VL stage-1 run on the tiny official-format data (checkpoints at steps 2 and 4).
The exported folder must hold the checkpoint's trained weights (equal to the end-of-run export for the
latest step, different for ``--step 2``), load as a model folder, and answer through ``videollama chat``
exactly what the library answers with the same greedy settings.
"""

from __future__ import annotations

import pytest
import torch

from media_fixtures import make_numbered_video
from train_fixtures import make_model_dir, make_official_data, stage_config
from videollama import cli
from videollama.engine import GenerationConfig
from videollama.inference import MediaOptions, Pipeline
from videollama.model import VideoLlama
from videollama.train.config import config_from_dict
from videollama.train.recipe import train

VL_TRAINED = {"video_qformer", "video_query_tokens", "frame_position_embedding", "video_projection"}
QUESTION = "What is in the video?"
MAX_NEW_TOKENS = 8


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("export-cli")
    data = make_official_data(root / "data", clips=2)
    model_dir = make_model_dir(root / "base", tiny_tokenizer)
    out = root / "run"
    summary = train(config_from_dict(stage_config(data, model_dir, out, steps=4, save_every=2, tensorboard=False)))
    assert summary["steps"] == 4
    return model_dir, out


def _state(folder) -> dict[str, torch.Tensor]:
    return VideoLlama.from_pretrained(folder).state_dict()


@pytest.mark.slow
def test_export_then_chat_on_the_exported_folder(run, tmp_path, capsys):
    base_dir, run_dir = run
    exported = tmp_path / "exported"
    assert cli.main(["export", str(run_dir), "--out", str(exported)]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == str(exported)
    assert (exported / "config.json").is_file() and list(exported.glob("*.safetensors"))

    # The latest checkpoint's weights: equal to the run's own end-of-run export; only the VL parts moved.
    state, at_end, base = _state(exported), _state(run_dir / "export"), _state(base_dir)
    assert state.keys() == at_end.keys() == base.keys()
    for key, value in state.items():
        assert torch.equal(value, at_end[key]), key
    changed = {k.split(".")[0] for k, v in state.items() if not torch.equal(v, base[k])}
    assert changed == VL_TRAINED

    # An earlier step is a different model; an unknown step is a one-line error (exit 2).
    early = tmp_path / "step2"
    assert cli.main(["export", str(run_dir), "--out", str(early), "--step", "2"]) == 0
    step2 = _state(early)
    assert not torch.equal(step2["video_projection.weight"], state["video_projection.weight"])
    assert not torch.equal(step2["video_projection.weight"], base["video_projection.weight"])
    assert torch.equal(step2["language_model.lm_head.weight"], base["language_model.lm_head.weight"])
    capsys.readouterr()
    assert cli.main(["export", str(run_dir), "--out", str(tmp_path / "nope"), "--step", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no checkpoint of step 3" in err and "[2, 4]" in err

    # `videollama chat` on the exported folder answers, and answers what the library does.
    clip = make_numbered_video(tmp_path / "clip.mp4", 16, fps=8, size=(64, 48))
    status = cli.main(["chat", str(clip), QUESTION, "--model", str(exported), "--greedy",
                       "--max-new-tokens", str(MAX_NEW_TOKENS)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    answer = captured.out.strip()
    assert answer
    pipe = Pipeline.from_pretrained(exported)
    session = pipe.chat(clip, options=MediaOptions(num_frames=8))
    expected = session.ask(QUESTION, GenerationConfig(max_new_tokens=MAX_NEW_TOKENS, do_sample=False))
    assert answer == expected.strip()
