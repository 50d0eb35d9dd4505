"""The trainer end to end on tiny data in the official formats: learning, resume, export, audio branch, DDP."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from train_fixtures import make_model_dir, make_official_data, stage_config
from videollama.model import VideoLlama
from videollama.train.config import config_from_dict
from videollama.train.recipe import export, train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_official_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer):
    return make_model_dir(tmp_path_factory.mktemp("base") / "model", tiny_tokenizer)


def _losses(run_dir: Path) -> dict[int, float]:
    return {step: r["loss"] for step, r in _metrics(run_dir).items()}


def _metrics(run_dir: Path) -> dict[int, dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {int(r["step"]): r for r in map(json.loads, lines)}


@pytest.fixture(scope="module")
def reference(data, model_dir, tmp_path_factory):
    """One process, batch 4, 4 steps, no accumulation: what the distributed and accumulated runs must equal."""
    out = tmp_path_factory.mktemp("reference") / "single"
    summary = train(config_from_dict(stage_config(data, model_dir, out, steps=4, batch_size=4, save_every=4)))
    assert summary["steps"] == 4 and summary["samples"] == 16
    return out


def _assert_same_run(run: Path, ref: Path, *, rel: float = 1e-5, atol: float = 1e-5) -> None:
    """Same losses and learning rates at every step, and the same exported weights, within tolerance."""
    one, two = _metrics(ref), _metrics(run)
    assert one.keys() == two.keys() == {0, 1, 2, 3}
    for step in one:  # same data, same global token normalisation: equal up to float summation order
        assert two[step]["loss"] == pytest.approx(one[step]["loss"], rel=rel, abs=1e-6), (step, one, two)
        assert two[step]["lr"] == one[step]["lr"], step
    a = VideoLlama.from_pretrained(ref / "export").state_dict()
    b = VideoLlama.from_pretrained(run / "export").state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=rel, atol=atol, msg=key)


@pytest.mark.slow
def test_vision_stage1_trains_only_its_parts_and_exports(data, model_dir, tmp_path):
    out = tmp_path / "run"
    summary = train(config_from_dict(stage_config(data, model_dir, out, steps=6)))
    assert summary["steps"] == 6 and summary["samples"] == 12
    assert summary["skipped"]["webvid"]["failed"] >= 1  # the CSV row whose video is missing
    assert (out / "loss_curve.png").stat().st_size > 1000 and (out / "summary.json").is_file()
    assert list((out / "tensorboard").iterdir())
    base, trained = VideoLlama.from_pretrained(model_dir), VideoLlama.from_pretrained(out / "export")
    changed = {k.split(".")[0] for k, v in trained.state_dict().items() if not torch.equal(v, base.state_dict()[k])}
    assert changed == {"video_qformer", "video_query_tokens", "frame_position_embedding", "video_projection"}
    # `videollama export` from the checkpoint gives the same weights as the end-of-run export.
    exported = VideoLlama.from_pretrained(export(out, tmp_path / "exported"))
    for key, value in trained.state_dict().items():
        assert torch.equal(value, exported.state_dict()[key]), key


@pytest.mark.slow
def test_training_reduces_the_loss(data, model_dir, tmp_path):
    """Against the same run at lr 0 (same batches, same order): only the soft prompt can move the frozen
    random LLM's caption loss, which sits at ~6.12 untrained and settles near ~5.75 after 24 steps."""
    last = {}
    for lr in (0.0, 3e-3):
        cfg = stage_config(data, model_dir, tmp_path / f"fit{lr}", steps=24, batch_size=2)
        cfg["data"]["datasets"] = {"cc_sbu_align": cfg["data"]["datasets"]["cc_sbu_align"]}
        cfg["optim"].update(init_lr=lr, min_lr=lr, warmup_steps=0)
        train(config_from_dict(cfg))
        losses = list(_losses(tmp_path / f"fit{lr}").values())
        assert len(losses) == 24
        last[lr] = sum(losses[-6:]) / 6
    assert last[3e-3] < last[0.0] - 0.2, last


@pytest.mark.slow
@pytest.mark.parametrize("accum", [1, 2])
def test_resume_continues_exactly(data, model_dir, tmp_path, accum):
    """Stopped after step 3 (of 6) and resumed: bit-identical losses; with accumulation the checkpoint falls
    on a step boundary (after an optimizer step) and the resumed run reads the same micro-batches."""
    def config(out, **run):
        raw = stage_config(data, model_dir, out, steps=6, batch_size=2 if accum == 1 else 1, **run)
        raw["optim"]["accum_grad_iters"] = accum
        return config_from_dict(raw)

    full = tmp_path / "full"
    train(config(full))
    part = tmp_path / "part"
    train(config(part, stop_after=3))
    assert not (part / "export").exists()
    train(config(part, resume=True))
    assert _losses(part) == _losses(full)  # bit-identical: weights, optimizer, schedule, data order, RNG
    assert _losses(part).keys() == set(range(6))


@pytest.mark.slow
def test_audio_branch_trains_on_frames_through_imagebind_vision(data, model_dir, tmp_path, monkeypatch):
    seen = []
    original = VideoLlama.forward

    def spy(self, *args, **kwargs):
        seen.append({k for k, v in kwargs.items() if v is not None})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(VideoLlama, "forward", spy)
    out = tmp_path / "audio"
    train(config_from_dict(stage_config(data, model_dir, out, stage=2, branch="audio", steps=4)))
    assert seen and all("visual_audio_values" in s and "audio_values" not in s and "pixel_values" not in s for s in seen)
    base, trained = VideoLlama.from_pretrained(model_dir), VideoLlama.from_pretrained(out / "export")
    changed = {k.split(".")[0] for k, v in trained.state_dict().items() if not torch.equal(v, base.state_dict()[k])}
    assert changed == {"audio_qformer", "audio_query_tokens", "audio_position_embedding", "audio_projection"}


def _torchrun(config_path: Path, *args: str, port_offset: int = 0) -> None:
    """``torchrun --nproc_per_node 2 -m videollama train CONFIG ARGS`` on the CPU (gloo)."""
    port = 29500 + (os.getpid() + port_offset) % 1000
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parent))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(port), "-m", "videollama", "train", str(config_path), *args],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_match_one_process(data, model_dir, reference, tmp_path):
    """torchrun with 2 CPU processes (gloo, DDP), global batch 4 = 2 x 2, against 1 process with batch 4."""
    cfg = stage_config(data, model_dir, tmp_path / "ddp", steps=4, batch_size=2, save_every=4)
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))  # dataset order = data order
    _torchrun(tmp_path / "ddp.yaml")
    _assert_same_run(tmp_path / "ddp", reference)


@pytest.mark.slow
def test_fsdp_two_processes_match_one_process_and_resume(data, model_dir, reference, tmp_path):
    """FSDP2 with 2 CPU processes (gloo), global batch 4 = 2 x 2, against 1 process with batch 4: stopped
    after step 2 (checkpoint: gathered weights, name-keyed optimizer state), resumed under FSDP to step 4.
    Losses of both parts equal the 1-process run within rel 1e-5 (float summation order only); the export
    holds full tensors equal to the 1-process export within 1e-5. Everything is sharded (run.fsdp_frozen
    default "shard")."""
    cfg = stage_config(data, model_dir, tmp_path / "fsdp", steps=4, batch_size=2, save_every=4, distributed="fsdp")
    (tmp_path / "fsdp.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))  # dataset order = data order
    _torchrun(tmp_path / "fsdp.yaml", "run.stop_after=2")
    assert not (tmp_path / "fsdp" / "export").exists()
    assert (tmp_path / "fsdp" / "checkpoints" / "checkpoint-00000002" / "meta.json").is_file()
    _torchrun(tmp_path / "fsdp.yaml", "--resume", port_offset=1)
    _assert_same_run(tmp_path / "fsdp", reference)
    base = VideoLlama.from_pretrained(model_dir)
    b = VideoLlama.from_pretrained(tmp_path / "fsdp" / "export").state_dict()
    assert not torch.equal(b["video_projection.weight"], base.state_dict()["video_projection.weight"])
    layout = json.loads((tmp_path / "fsdp" / "summary.json").read_text())["fsdp"]
    assert layout == {"frozen": "shard", "parameters": _expected_layout(base, frozen_sharded=True)}


def _expected_layout(model: VideoLlama, *, frozen_sharded: bool) -> dict[str, int]:
    model.set_trainable(("video_qformer", "video_query_tokens", "frame_position_embedding", "video_projection"))
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert trained > 0 and frozen > trained
    return {"sharded_trained": trained, "sharded_frozen": frozen if frozen_sharded else 0,
            "replicated_trained": 0, "replicated_frozen": 0 if frozen_sharded else frozen}


@pytest.mark.slow
def test_fsdp_with_replicated_frozen_parts_and_accumulation_matches_one_process(data, model_dir, reference, tmp_path):
    """run.fsdp_frozen=replicate: only the trained parts are sharded (the frozen encoders and LLM stay whole
    on both ranks, ignored by FSDP). 2 processes x batch 1 x accum_grad_iters 2 = global batch 4, so the
    FSDP no-sync micro-batches are exercised too: the same losses, lrs and export as 1 process with batch 4."""
    out = tmp_path / "fsdp_replicate"
    cfg = stage_config(data, model_dir, out, steps=4, batch_size=1, save_every=4, distributed="fsdp",
                       fsdp_frozen="replicate")
    cfg["optim"]["accum_grad_iters"] = 2
    (tmp_path / "fsdp_replicate.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    _torchrun(tmp_path / "fsdp_replicate.yaml", port_offset=2)
    _assert_same_run(out, reference)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == 16 and summary["world_size"] == 2
    layout = _expected_layout(VideoLlama.from_pretrained(model_dir), frozen_sharded=False)
    assert summary["fsdp"] == {"frozen": "replicate", "parameters": layout}


def test_accumulation_micro_batches_split_the_global_batch():
    """AccumulationSampler: at every step, the micro-batches of all processes are a partition of the global
    batch one process without accumulation reads (same records, same augmentation seeds, same dataset)."""
    from videollama.train.mixing import MultiDatasetSampler
    from videollama.train.recipe import AccumulationSampler

    sizes, ratios = [7, 5], [3, 1]
    big = list(MultiDatasetSampler(sizes, ratios, 8, seed=3, num_steps=6))
    for world, accum, batch in ((1, 2, 4), (1, 4, 2), (2, 2, 2), (2, 4, 1)):
        per_rank = [list(AccumulationSampler(sizes, ratios, batch, seed=3, rank=r, world_size=world, accum=accum,
                                             num_steps=6)) for r in range(world)]
        assert all(len(micro) == 6 * accum for micro in per_rank)
        for step, keys in enumerate(big):
            parts = [k for micro in per_rank for k in micro[step * accum:(step + 1) * accum]]
            assert all(len(p) == batch for p in parts)
            assert sorted(k for p in parts for k in p) == sorted(keys), (world, accum, step)
    # The resume state counts steps and carries the global batch: another split of it continues the order.
    sampler = AccumulationSampler(sizes, ratios, 2, seed=3, world_size=2, accum=2, num_steps=6)
    state = sampler.state_dict(3)
    assert state["global_batch"] == 8 and state["next_step"] == 3
    other = AccumulationSampler(sizes, ratios, 4, seed=3, accum=2, num_steps=6)
    other.load_state_dict(state)
    assert len(other) == 3 * 2
    assert sorted(k for micro in list(other)[:2] for k in micro) == sorted(big[3])
    with pytest.raises(ValueError, match="global_batch"):
        AccumulationSampler(sizes, ratios, 2, seed=3, accum=2, num_steps=6).load_state_dict(state)


@pytest.mark.slow
def test_accumulation_equals_the_bigger_batch(data, model_dir, reference, tmp_path):
    """batch_size 2 x accum_grad_iters 2 trains like batch_size 4: each step's two micro-batches are the
    halves of the batch-4 step's records, the token losses are divided by the supervised tokens of the whole
    step (not averaged per micro-batch), one optimizer step and one schedule step per global batch. Same
    losses and lrs at every step, same exported weights (rel/abs 1e-5, float summation order only)."""
    from transformers import AutoTokenizer

    from videollama.train.recipe import build_batches

    out = tmp_path / "accum"
    raw = stage_config(data, model_dir, out, steps=4, batch_size=2, save_every=4)
    raw["optim"]["accum_grad_iters"] = 2
    cfg = config_from_dict(raw)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    micro = list(build_batches(cfg, tokenizer, 4))
    big = config_from_dict(stage_config(data, model_dir, out, steps=4, batch_size=4))
    whole = list(build_batches(big, tokenizer, 4))
    assert len(micro) == 8 and len(whole) == 4
    supervised = []
    for step, batch in enumerate(whole):
        halves = micro[2 * step:2 * step + 2]
        assert [i for h in halves for i in h["index"]] == list(batch["index"]), step
        assert [n for h in halves for n in h["dataset"]] == list(batch["dataset"]), step
        supervised.append([int((h["labels"][:, 1:] != -100).sum()) for h in halves])
    assert any(a != b for a, b in supervised), supervised  # per-micro-batch means would weigh tokens differently

    summary = train(cfg)
    assert summary["steps"] == 4 and summary["samples"] == 16
    _assert_same_run(out, reference)
    base = VideoLlama.from_pretrained(model_dir).state_dict()
    trained = VideoLlama.from_pretrained(out / "export").state_dict()
    assert not torch.equal(trained["video_projection.weight"], base["video_projection.weight"])


def _spied_run(cfg: dict) -> dict:
    """Train ``cfg`` and report what the LLM did: its decoder layers' checkpointing and training flags at each
    forward, how often their MLPs ran (forward + recomputation), the autocast state at each forward."""
    from transformers.models.llama.modeling_llama import LlamaMLP

    seen = {"flags": [], "mlp_calls": 0, "autocast": []}
    forward, mlp_forward = VideoLlama.forward, LlamaMLP.forward

    def spy(self, *args, **kwargs):
        layers = self.language_model.model.layers
        seen["flags"].append([(layer.gradient_checkpointing, layer.training, layer.mlp.training,
                               layer.self_attn.training) for layer in layers])
        seen["autocast"].append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return forward(self, *args, **kwargs)

    def mlp_spy(self, *args, **kwargs):
        seen["mlp_calls"] += 1
        return mlp_forward(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(VideoLlama, "forward", spy)
        patch.setattr(LlamaMLP, "forward", mlp_spy)
        seen["summary"] = train(config_from_dict(cfg))
    return seen


@pytest.fixture(scope="module")
def plain_run(data, model_dir, tmp_path_factory):
    """3 steps of batch 2, fp32, no checkpointing: the reference of the checkpointing and autocast tests."""
    out = tmp_path_factory.mktemp("plain") / "run"
    seen = _spied_run(stage_config(data, model_dir, out, steps=3, save_every=3))
    return out, seen


@pytest.mark.slow
def test_grad_checkpointing_recomputes_the_frozen_llm_and_trains_the_same(data, model_dir, plain_run, tmp_path):
    """optim.grad_checkpointing: the frozen LLM's decoder layers are checkpointed (flag set; they run again in
    the backward pass although the LLM is frozen and in eval mode, their submodules staying in eval mode),
    and the gradients still reach the trained parts in front of it: same losses (rel 1e-5) and the same
    trained weights (1e-5) as without checkpointing."""
    plain, off = plain_run
    out = tmp_path / "gc"
    cfg = stage_config(data, model_dir, out, steps=3, save_every=3)
    cfg["optim"]["grad_checkpointing"] = True
    on = _spied_run(cfg)
    layers = 2  # the tiny LLM
    assert len(on["flags"]) == len(off["flags"]) == 3
    assert all(flags == [(True, True, False, False)] * layers for flags in on["flags"]), on["flags"]
    assert all(flags == [(False, False, False, False)] * layers for flags in off["flags"]), off["flags"]
    assert off["mlp_calls"] == 3 * layers
    assert on["mlp_calls"] == 2 * 3 * layers  # forward + recomputation in backward
    one, two = _losses(plain), _losses(out)
    assert one.keys() == two.keys() == {0, 1, 2}
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5), (step, one, two)
    base = VideoLlama.from_pretrained(model_dir).state_dict()
    a = VideoLlama.from_pretrained(plain / "export").state_dict()
    b = VideoLlama.from_pretrained(out / "export").state_dict()
    changed = {k.split(".")[0] for k in b if not torch.equal(b[k], base[k])}
    assert changed == {"video_qformer", "video_query_tokens", "frame_position_embedding", "video_projection"}
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-5, msg=key)


@pytest.mark.slow
def test_bf16_autocast_on_cpu_keeps_fp32_master_weights(data, model_dir, plain_run, tmp_path):
    """optim.amp=true, dtype=bf16 on the CPU: the forward runs under bf16 autocast, the losses are finite,
    within 2e-2 (relative) of the fp32 run at step 0 but not equal to it (bf16 did the matmuls), the
    trained parts moved, and the export holds float32 (master) weights."""
    from safetensors import safe_open

    from videollama.model.checkpoint import weight_files

    plain, off = plain_run
    out = tmp_path / "bf16"
    cfg = stage_config(data, model_dir, out, steps=3, save_every=3)
    cfg["optim"].update(amp=True, dtype="bf16")
    on = _spied_run(cfg)
    assert on["autocast"] == [(True, torch.bfloat16)] * 3
    assert all(enabled is False for enabled, _ in off["autocast"])
    fp32, bf16 = _losses(plain), _losses(out)
    assert bf16.keys() == {0, 1, 2} and all(math.isfinite(v) for v in bf16.values())
    assert bf16[0] == pytest.approx(fp32[0], rel=2e-2) and bf16[0] != fp32[0], (bf16, fp32)
    dtypes = set()
    for path in weight_files(out / "export"):
        with safe_open(str(path), framework="pt") as f:
            dtypes |= {f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes == {torch.float32}, dtypes
    base = VideoLlama.from_pretrained(model_dir).state_dict()
    trained = VideoLlama.from_pretrained(out / "export").state_dict()
    changed = {k.split(".")[0] for k in trained if not torch.equal(trained[k], base[k])}
    assert changed == {"video_qformer", "video_query_tokens", "frame_position_embedding", "video_projection"}


@pytest.mark.slow
def test_lora_export_is_a_plain_model_folder_with_merged_adapters(data, model_dir, tmp_path):
    """LoRA (peft) on q_proj/v_proj: the end-of-run export and `videollama export` are plain model folders
    (adapters merged into the LLM weights) whose logits equal the trained peft model's (atol 1e-4)."""
    from transformers import AutoTokenizer

    from videollama.train.checkpoint import load_latest
    from videollama.train.base_model import apply_lora as _apply_lora
    from videollama.train.recipe import _load_trainable, build_batches

    out = tmp_path / "lora"
    raw = stage_config(data, model_dir, out, steps=3, save_every=3)
    raw["optim"]["lora"] = {"enabled": True, "r": 4, "alpha": 8}  # scaling 2, not the default
    cfg = config_from_dict(raw)
    train(cfg)
    exported = VideoLlama.from_pretrained(out / "export")  # loads: plain names, nothing missing or unexpected
    again = VideoLlama.from_pretrained(export(out, tmp_path / "exported"))
    base = VideoLlama.from_pretrained(model_dir)
    base_state, state = base.state_dict(), exported.state_dict()
    assert state.keys() == base_state.keys() and not any("lora" in k or "base_layer" in k for k in state)
    for key, value in state.items():
        assert torch.equal(value, again.state_dict()[key]), key
    llm_changed = {k for k in state if k.startswith("language_model.") and not torch.equal(state[k], base_state[k])}
    assert llm_changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in llm_changed), llm_changed
    assert len(llm_changed) == 2 * len(base.language_model.model.layers)

    # The trained peft model: the base, LoRA applied, the last checkpoint's weights (adapters unmerged).
    peft_model = VideoLlama.from_pretrained(model_dir)
    peft_model.set_trainable(cfg.trainable)
    _apply_lora(peft_model, cfg)
    ckpt = load_latest(out / "checkpoints")
    assert ckpt.step == 3 and any("lora_A" in k for k in ckpt.model)
    _load_trainable(peft_model, ckpt.model)
    peft_model.eval()
    batch = next(build_batches(cfg, AutoTokenizer.from_pretrained(model_dir), 1))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    unmerged = VideoLlama.from_pretrained(out / "export")  # the export with the LLM weights put back to the base
    with torch.no_grad():
        for key in llm_changed:
            unmerged.state_dict()[key].copy_(base_state[key])
        want = peft_model(**inputs).logits
        got = exported.eval()(**inputs).logits
        without_adapters = unmerged.eval()(**inputs).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert (without_adapters - want).abs().max() > 1e-3  # the merged adapters are what makes them equal


@pytest.fixture(scope="module")
def release(tmp_path_factory, tiny_tokenizer):
    from convert_fixtures import write_release

    return write_release(tmp_path_factory.mktemp("release"), Path(tiny_tokenizer.name_or_path),
                         vocab_size=tiny_tokenizer.vocab_size)


def _official_model(release, **extra) -> dict:
    return {"preset": "tiny", "llm_path": str(release.llm), "vit_ckpt": str(release.eva),
            "qformer_ckpt": str(release.blip2), **extra}


@pytest.mark.slow
def test_stage1_from_the_official_files(data, release, tmp_path, capsys):
    """VL stage 1 from the (tiny) official files: EVA + BLIP-2 + LLM frozen, MiniGPT-4's projection as the
    video projection's init, the other trained parts freshly initialised and reported as such."""
    minigpt4 = tmp_path / "pretrained_minigpt4.pth"
    d_llm, d_q = release.config.llm["hidden_size"], release.config.video_qformer.hidden_size
    proj = {"llama_proj.weight": torch.randn(d_llm, d_q), "llama_proj.bias": torch.randn(d_llm)}
    torch.save({"model": proj}, minigpt4)
    out = tmp_path / "stage1"
    raw = stage_config(data, None, out, steps=2, save_every=2)
    raw["model"] = _official_model(release, llama_proj_ckpt=str(minigpt4))
    summary = train(config_from_dict(raw))
    assert summary["steps"] == 2
    printed = capsys.readouterr().out
    assert "freshly initialised" in printed and "video_qformer" in printed and "video_query_tokens" in printed
    card = (out / "base-model" / "README.md").read_text()
    assert "NOT from a checkpoint" in card and "video_qformer" in card
    base = VideoLlama.from_pretrained(out / "base-model").state_dict()
    trained = VideoLlama.from_pretrained(out / "export").state_dict()
    changed = {k.split(".")[0] for k in trained if not torch.equal(trained[k], base[k])}
    assert changed == {"video_qformer", "video_query_tokens", "frame_position_embedding", "video_projection"}
    llm_key = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(trained["language_model." + llm_key], release.states["llm"][llm_key])
    assert torch.equal(trained["vision_model.embeddings.patch_embedding.weight"],
                       base["vision_model.embeddings.patch_embedding.weight"])
    # Built again (as `videollama export` does): the cached folder is reused, the projection is MiniGPT-4's.
    from videollama.train.base_model import build_model

    model, _ = build_model(config_from_dict(raw).model, with_audio_vision=False, cache_dir=out)
    assert torch.equal(model.video_projection.weight, proj["llama_proj.weight"])
    assert "converting" not in capsys.readouterr().out


@pytest.mark.slow
def test_stage2_from_a_previous_export_and_an_official_branch_file(data, release, tmp_path, model_dir):
    """AL stage 2 as the official YAML: ckpt = the VL stage's export/ (a model folder), ckpt_2 = an official
    AL .pth, ImageBind (with its vision encoder) from imagebind_huge.pth; it trains."""
    from videollama.train.base_model import build_model

    vl_export = tmp_path / "vl" / "export"
    raw = stage_config(data, None, tmp_path / "vl", steps=1)
    raw["model"] = _official_model(release)
    train(config_from_dict(raw))
    out = tmp_path / "al2"
    raw = stage_config(data, None, out, stage=2, branch="audio", steps=2, save_every=2)
    raw["model"] = _official_model(release, imagebind_ckpt=str(release.imagebind), ckpt=str(vl_export),
                                   ckpt_2=str(release.al), with_audio=True)
    cfg = config_from_dict(raw)
    model, _ = build_model(cfg.model, with_audio_vision=True, cache_dir=tmp_path / "probe")
    vl = VideoLlama.from_pretrained(vl_export).state_dict()
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in vl.items() if k.startswith("video_qformer."))
    assert any(k.startswith("imagebind_vision.") for k in state)
    assert torch.equal(state["audio_query_tokens"], release.states["al"]["audio_query_tokens"])
    assert train(cfg)["steps"] == 2
    trained = VideoLlama.from_pretrained(out / "export").state_dict()
    changed = {k.split(".")[0] for k in trained if not torch.equal(trained[k], state[k])}
    assert changed == {"audio_qformer", "audio_query_tokens", "audio_position_embedding", "audio_projection"}


def test_official_files_without_a_frozen_part_fail_clearly(data, release, tmp_path):
    raw = stage_config(data, None, tmp_path / "noimagebind", stage=2, branch="audio", steps=1)
    raw["model"] = _official_model(release, with_audio=True)  # no imagebind_ckpt
    with pytest.raises(ValueError, match=r"do not provide the frozen part\(s\) audio_encoder, imagebind_vision; "
                                         r"give model.imagebind_ckpt"):
        train(config_from_dict(raw))
    raw = stage_config(data, None, tmp_path / "badckpt", steps=1)
    raw["model"] = _official_model(release, ckpt=str(tmp_path))  # a folder that is no model folder
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        train(config_from_dict(raw))
