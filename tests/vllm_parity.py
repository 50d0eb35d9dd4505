"""Run in the vLLM venv by tests/test_vllm_plugin.py: the same requests through vLLM and through ``Pipeline``.

    python tests/vllm_parity.py MODEL_DIR MEDIA_DIR OUT.json

MEDIA_DIR holds video.mp4 (no sound), av.mp4 (with sound), image.png and audio.wav. For each, both
engines answer the same question greedily (fp32, CPU); OUT.json gets per case the prompt ids, the
generated ids and the first-token logits of each. vLLM returns raw logits for every vocabulary entry
(``logprobs_mode="raw_logits"``). The caller asserts; this script only measures.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

QUESTION = "What is shown and heard?"
MAX_NEW_TOKENS = 12
CASES = {"video": ("video.mp4", "video_url"), "video_audio": ("av.mp4", "video_url"),
         "image": ("image.png", "image_url"), "audio": ("audio.wav", "audio_url")}


def pipeline_side(model_dir: str, media_dir: Path) -> dict:
    import torch

    from videollama import GenerationConfig, MediaOptions, Pipeline

    pipe = Pipeline.from_pretrained(model_dir, dtype=torch.float32)
    out = {}
    for case, (name, _) in CASES.items():
        media = pipe.encode_media(media_dir / name, MediaOptions(num_frames=8))
        ids = pipe.prompt_ids(media, [(QUESTION, None)])
        with torch.inference_mode():
            embeds = pipe.model.embed_inputs(torch.tensor([ids]), media.video, media.audio)
            logits = pipe.model.language_model(inputs_embeds=embeds).logits[0, -1]
        request = pipe.request(media, [(QUESTION, None)], GenerationConfig(do_sample=False, max_new_tokens=MAX_NEW_TOKENS))
        generated = pipe.engine.generate_all([request])[0]
        out[case] = {"prompt_ids": ids, "generated_ids": generated, "first_logits": logits.tolist(),
                     "has_audio": media.audio is not None}
    return out


def vllm_side(model_dir: str, media_dir: Path) -> dict:
    from vllm import LLM, SamplingParams

    llm = LLM(model_dir, dtype="float32", max_model_len=512, enforce_eager=True, max_num_seqs=4,
              allowed_local_media_path=str(media_dir), logprobs_mode="raw_logits", max_logprobs=-1,
              limit_mm_per_prompt={"video": 1, "image": 1, "audio": 1})
    vocab = llm.llm_engine.model_config.get_vocab_size()
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS, logprobs=vocab)
    conversations = []
    for name, part in CASES.values():
        url = (media_dir / name).resolve().as_uri()
        conversations.append([{"role": "user", "content": [
            {"type": part, part: {"url": url}}, {"type": "text", "text": QUESTION}]}])
    results = llm.chat(conversations, params, mm_processor_kwargs={"num_frames": 8})
    out = {}
    for case, result in zip(CASES, results):
        completion = result.outputs[0]
        first = completion.logprobs[0]
        logits = [first[i].logprob for i in range(vocab)]
        out[case] = {"prompt_ids": list(result.prompt_token_ids), "generated_ids": list(completion.token_ids),
                     "first_logits": logits}
    return out


def main() -> None:
    model_dir, media_dir, out_path = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    report = {"pipeline": pipeline_side(model_dir, media_dir), "vllm": vllm_side(model_dir, media_dir)}
    out_path.write_text(json.dumps(report))


if __name__ == "__main__":  # vLLM starts worker processes: the guard keeps them from re-running this
    main()
