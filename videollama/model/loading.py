"""Load a converted model for inference on GPUs: LLM spread over devices and/or quantised to 8/4 bits.

The plain case (one device, one dtype) is ``VideoLlama.from_pretrained(dir, device=..., dtype=...)``,
which the CLI's ``--device``/``--dtype`` cover. Two more options help users whose GPU is too small for
the 7B/13B LLM in 16 bits (the official code needs >24 GB for VL-only 7B); on the command line
(``chat``, ``serve``, ``web``, ``eval``) they are ``--device-map auto`` and ``--load-in {8bit,4bit}``
(``videollama.cli.add_model_args``), passed on by ``Pipeline.from_pretrained``:

* ``device_map="auto"`` (or an explicit accelerate device map) spreads the *language model* over the
  visible GPUs (and CPU RAM, if needed) through transformers/accelerate; the encoders, Q-Formers and
  projections (1.22B parameters; 1.86B with ImageBind's vision encoder) stay on one GPU (``device`` if
  it is a GPU, else the first).
* ``quantization="8bit"`` / ``"4bit"`` loads the language model's linear layers with bitsandbytes
  (LLM.int8 / NF4), as the official ``low_resource`` option did with 8 bits.

Both need CUDA (and the second the ``bitsandbytes`` package); without them the call fails at once
with one line saying what is missing. The LLM's tensors are read lazily from the model folder's
safetensors shards and handed to ``transformers.AutoModelForCausalLM.from_pretrained(None,
state_dict=...)``, so nothing is copied to CPU RAM first.

    model = load_for_inference("videollama2-7b", device="cuda", dtype=torch.float16, quantization="8bit")
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import VideoLlamaError

__all__ = ["KEEP_FP32", "QUANTIZATION_CHOICES", "LoadingError", "load_for_inference", "load_with_separate_llm"]

QUANTIZATION_CHOICES = ("8bit", "4bit")
LLM_PREFIX = "language_model."
# Tensors stored and loaded in float32 whatever the dtype: log(20) rounds to 3.0 in bf16 (a scale of 20.09).
KEEP_FP32 = ("audio_encoder.log_logit_scale",)


class LoadingError(VideoLlamaError, ValueError):
    """The requested loading option cannot work on this machine (no CUDA, no bitsandbytes, ...)."""


def load_for_inference(
    directory: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    device_map: str | dict | None = None,
    quantization: str | None = None,
    with_audio: bool | None = None,
    with_vision: bool | None = None,
):
    """Load a model folder for inference; see the module docstring.

    Args:
        directory: a folder written by ``videollama convert`` or ``VideoLlama.save_pretrained``.
        device: where the model goes (with ``device_map``: where the non-LLM parts go; default first GPU).
        dtype: weight dtype (default: as saved). With quantization it is the compute dtype of the LLM.
        device_map: ``"auto"`` or an accelerate device map for the language model.
        quantization: ``"8bit"`` or ``"4bit"`` (bitsandbytes) for the language model.
        with_audio: ``False`` loads a folder that has the audio branch without it.
        with_vision: ``False`` loads a folder that has the vision branch without it (an audio-only model).
    Raises:
        LoadingError: the option needs CUDA or bitsandbytes and this machine lacks them.
    """
    from .videollama import VideoLlama

    if quantization is not None and quantization not in QUANTIZATION_CHOICES:
        raise LoadingError(f"unknown quantization {quantization!r}; choose one of {QUANTIZATION_CHOICES}")
    if device_map is None and quantization is None:
        return VideoLlama.from_pretrained(directory, device=device, dtype=dtype, with_audio=with_audio,
                                          with_vision=with_vision)
    _require_cuda(device_map, quantization)
    quantization_config = _bitsandbytes_config(quantization, dtype) if quantization else None
    first = torch.device(device)
    if first.type != "cuda":
        first = torch.device("cuda", 0)
    return load_with_separate_llm(directory, device=first, dtype=dtype,
                                  device_map=device_map if device_map is not None else {"": str(first)},
                                  quantization_config=quantization_config, with_audio=with_audio,
                                  with_vision=with_vision)


def _require_cuda(device_map, quantization) -> None:
    if torch.cuda.is_available():
        return
    asked = " and ".join(x for x in (f"device_map={device_map!r}" if device_map is not None else "",
                                     f"{quantization} quantization" if quantization else "") if x)
    build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, but no GPU is visible"
    also = "; bitsandbytes is not installed either" if quantization and not _has_bitsandbytes() else ""
    raise LoadingError(f"{asked} needs a CUDA GPU, and this machine has none (torch {torch.__version__}: {build}){also}; "
                       "load without these options (--device cpu) instead")


def _has_bitsandbytes() -> bool:
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


def _bitsandbytes_config(quantization: str, dtype: torch.dtype | None):
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise LoadingError(f"{quantization} quantization needs the bitsandbytes package: pip install bitsandbytes") from None
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_compute_dtype=dtype or torch.float16)


def load_with_separate_llm(directory: str | Path, *, device: torch.device, dtype: torch.dtype | None,
                           device_map, quantization_config=None, with_audio: bool | None = None,
                           with_vision: bool | None = None):
    """Load the non-LLM parts onto ``device`` and the LLM through transformers with ``device_map``.

    Works on any device (the tests run it on CPU with ``device_map={"": "cpu"}``); the CUDA and
    bitsandbytes checks are :func:`load_for_inference`'s.
    """
    from accelerate import init_empty_weights
    from safetensors import safe_open

    from .checkpoint import left_out, weight_files, without_branches
    from .videollama import VideoLlama, llm_config, load_config

    directory = Path(directory)
    config = without_branches(load_config(directory), with_audio=with_audio, with_vision=with_vision)
    with init_empty_weights(include_buffers=False):
        model = VideoLlama(config)
    parts: dict[str, torch.Tensor] = {}
    llm_state: dict[str, torch.Tensor] = {}
    for path in weight_files(directory):
        with safe_open(str(path), framework="pt") as f:  # tensors stay memory-mapped until used
            for key in f.keys():
                if left_out(config, key):
                    continue  # e.g. an audio-free load of a model folder that has the audio branch
                if key.startswith(LLM_PREFIX):
                    llm_state[key[len(LLM_PREFIX):]] = f.get_tensor(key)
                else:
                    parts[key] = f.get_tensor(key)
    expected = {k for k in model.state_dict() if not k.startswith(LLM_PREFIX)}
    missing, unexpected = sorted(expected - set(parts)), sorted(set(parts) - expected)
    if missing or unexpected:
        raise LoadingError(f"{directory}: weights do not match config.json (missing {missing[:5]}, unexpected {unexpected[:5]})")
    for key, tensor in parts.items():
        cast = dtype is not None and tensor.is_floating_point() and key not in KEEP_FP32
        parts[key] = tensor.to(device=device, dtype=dtype if cast else tensor.dtype)
    llm_class = type(model.language_model)  # the concrete transformers class AutoModelForCausalLM chose
    model.language_model = None  # replaced below; keeps load_state_dict's key check to the other parts
    result = model.load_state_dict(parts, strict=False, assign=True)
    leftover = [k for k in result.missing_keys if not k.startswith(LLM_PREFIX)]
    if leftover or result.unexpected_keys:
        raise LoadingError(f"{directory}: could not place {leftover[:5] or result.unexpected_keys[:5]}")
    model.language_model = llm_class.from_pretrained(
        None, config=llm_config(config.llm), state_dict=llm_state, device_map=device_map,
        quantization_config=quantization_config, dtype=dtype if dtype is not None else "auto",
    )
    model.set_trainable(())
    return model.eval()
