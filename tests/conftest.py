"""Shared fixtures: a tiny tokenizer and a tiny random model (session-scoped: built once)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    from videollama.tokenizer import train_tiny_tokenizer

    return train_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    from videollama.model import VideoLlama
    from videollama.presets import tiny
    from videollama.processor import attach_media_tokens

    config = tiny(vocab_size=tiny_tokenizer.vocab_size)
    attach_media_tokens(tiny_tokenizer, config)
    torch.manual_seed(0)
    return VideoLlama(config).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model, tiny_tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-model")
    tiny_model.save_pretrained(path, tokenizer=tiny_tokenizer)
    return path


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_model, tiny_tokenizer):
    from videollama.inference import Pipeline

    return Pipeline(tiny_model, tiny_tokenizer)


@pytest.fixture(scope="session")
def quick_chain(tmp_path_factory):
    """``(out_dir, ChainResult)`` of one quick SynthAV chain (``ChainSettings.quick(0)``, audio recipe ``mixed``: its
    world has the audio-text sets and its audio branch trains on sound and frames), shared by the chain tests and
    the research-tool tests."""
    from dataclasses import replace

    from videollama.synthav.chain import ChainSettings, run_chain

    out = tmp_path_factory.mktemp("synthav_chain")
    return out, run_chain(out, seed=0, settings=replace(ChainSettings.quick(0), audio_recipe="mixed"))
