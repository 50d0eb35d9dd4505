"""Read weight files safely and lazily: ``.pth`` pickles without code execution, safetensors by header.

Three guarantees for every file a conversion reads:

* **No code runs.** ``.pth`` files go through ``torch.load(weights_only=True)``; a pickle that needs
  anything beyond tensors and plain containers (``os.system``, a class, numpy objects, ...) is refused
  with :class:`UnsafeCheckpointError` naming the offending global. Nothing in the file is executed.
* **Clear errors.** A truncated or corrupt download raises :class:`CheckpointReadError` naming the file
  and the likely cause, never a miniz traceback.
* **Bounded memory.** Tensors are handed out as :class:`LazyTensor` handles (shape and dtype known, data
  not read). ``.pth`` files are memory-mapped (``mmap=True``) and safetensors files are opened on
  demand; each source can be ``release()``-d, which drops its mapping so the pages it touched leave
  the process's resident set. The writer releases sources as it goes (see ``writer.py``).

:func:`identify_checkpoint` names what a state dict looks like (a Video-LLaMA VL or AL checkpoint, EVA
ViT-g, BLIP-2, ImageBind, an LLM, MiniGPT-4's projection), so a file given in the wrong slot fails
with :class:`WrongCheckpointError` saying which slot it belongs in.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..errors import VideoLlamaError

__all__ = [
    "CheckpointReadError",
    "UnsafeCheckpointError",
    "WrongCheckpointError",
    "LazyTensor",
    "PthStateDict",
    "SafetensorsStateDict",
    "load_pth",
    "first_specific_line",
    "open_state_dict",
    "open_hf_folder",
    "identify_checkpoint",
    "expect_checkpoint",
    "CHECKPOINT_KINDS",
]

# safetensors dtype names <-> torch dtypes.
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
HF_SAFETENSORS_INDEX = "model.safetensors.index.json"
HF_SAFETENSORS_SINGLE = "model.safetensors"
HF_BIN_INDEX = "pytorch_model.bin.index.json"
HF_BIN_SINGLE = "pytorch_model.bin"


class CheckpointReadError(VideoLlamaError, ValueError):
    """A weight file cannot be read (missing, truncated, corrupt, or not a checkpoint)."""


class UnsafeCheckpointError(CheckpointReadError):
    """A pickle that would need to run code (or build arbitrary objects) to load; refused."""


class WrongCheckpointError(VideoLlamaError, ValueError):
    """A readable checkpoint of the wrong kind for the slot it was given in."""


# ----------------------------------------------------------------------------------- .pth files
def load_pth(path: str | Path) -> object:
    """``torch.load`` a ``.pth`` with ``weights_only=True`` (memory-mapped when the format allows).

    Raises:
        FileNotFoundError: the file does not exist.
        UnsafeCheckpointError: unpickling would need code execution or a non-tensor global; nothing
            from the file was executed.
        CheckpointReadError: truncated, corrupt, or not a PyTorch checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointReadError(f"{path}: empty file (an interrupted download?)")
    # The zip format (torch >= 1.6) can be memory-mapped; legacy pickles are read into memory.
    zipped = zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except Exception as err:  # torch raises UnpicklingError/RuntimeError/EOFError/... for bad files
        raise _explain_load_error(path, err, zipped) from None


def _explain_load_error(path: Path, err: Exception, zipped: bool) -> CheckpointReadError:
    text = str(err)
    if "Weights only load failed" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        detail = f"it references {found.group(1)}" if found else first_specific_line(text)
        return UnsafeCheckpointError(
            f"{path}: refused: loading this pickle would need to run code or build arbitrary objects ({detail}); "
            "only plain tensor checkpoints are read. If you trust the file, re-save its weights elsewhere with "
            "torch.save({'model': torch.load(F, weights_only=False)['model']}, F2) and convert F2"
        )
    truncated = "central directory" in text or "failed reading zip archive" in text or "truncated" in text
    if truncated or (not zipped and isinstance(err, EOFError)):
        return CheckpointReadError(f"{path}: truncated or corrupt file (incomplete download?): {first_specific_line(text)}")
    if "data.pkl" in text or "invalid load key" in text or "could not find MARK" in text:
        return CheckpointReadError(f"{path}: not a PyTorch checkpoint ({first_specific_line(text)})")
    return CheckpointReadError(f"{path}: cannot be read as a PyTorch checkpoint: {type(err).__name__}: {first_specific_line(text)}")


def first_specific_line(text: str) -> str:
    """The most informative line of a torch error message (they are long and generic)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if line.startswith(("Trying to load unsupported", "Unsupported operand", "Unsupported global")):
            return line
    return lines[0][:200] if lines else "unknown error"


# ----------------------------------------------------------------------------------- lazy tensors
@dataclass(frozen=True)
class LazyTensor:
    """A tensor whose shape and dtype are known but whose data is read only by :meth:`load`."""

    shape: torch.Size
    dtype: torch.dtype
    loader: Callable[[], Tensor]
    origin: str  # "file:key", for messages

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    def load(self) -> Tensor:
        tensor = self.loader()
        if tuple(tensor.shape) != tuple(self.shape):
            raise CheckpointReadError(f"{self.origin}: data has shape {tuple(tensor.shape)}, header said {tuple(self.shape)}")
        return tensor

    @staticmethod
    def of(tensor: Tensor, origin: str = "memory") -> "LazyTensor":
        """Wrap an in-memory tensor (tests, derived values)."""
        return LazyTensor(tensor.shape, tensor.dtype, lambda: tensor, origin)


class _Releasable:
    """A source that caches an open file/mapping; ``release()`` drops it (pages leave the RSS)."""

    def release(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class PthStateDict(Mapping[str, LazyTensor], _Releasable):
    """The tensors of a ``.pth`` file, lazily, under its ``model`` entry or its root.

    ``entry="auto"`` takes ``obj['model']`` when the file is a training checkpoint (``{'model': ...,
    'optimizer': ..., 'epoch': ...}``; the other entries are listed in :attr:`extras` and never
    touched) and the root when the file is itself a state dict.
    """

    def __init__(self, path: str | Path, entry: str | None = "auto") -> None:
        self.path = Path(path)
        self.entry = entry
        self._cache: dict[str, Tensor] | None = None
        self.extras: list[str] = []
        state = self._state()
        self._meta = {key: (t.shape, t.dtype) for key, t in state.items()}
        self.release()

    def _state(self) -> dict[str, Tensor]:
        if self._cache is None:
            obj = load_pth(self.path)
            self._cache, self.extras = _select_state(obj, self.entry, self.path)
        return self._cache

    def release(self) -> None:
        self._cache = None

    def __getitem__(self, key: str) -> LazyTensor:
        shape, dtype = self._meta[key]
        return LazyTensor(shape, dtype, lambda: self._state()[key], f"{self.path.name}:{key}")

    def __iter__(self) -> Iterator[str]:
        return iter(self._meta)

    def __len__(self) -> int:
        return len(self._meta)


def _select_state(obj: object, entry: str | None, path: Path) -> tuple[dict[str, Tensor], list[str]]:
    if not isinstance(obj, dict):
        raise CheckpointReadError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    extras: list[str] = []
    if entry == "auto":
        entry = "model" if isinstance(obj.get("model"), dict) else None
    if entry is not None:
        if entry not in obj:
            raise CheckpointReadError(f"{path}: no '{entry}' entry (top-level keys: {sorted(map(str, obj))[:10]})")
        extras = [str(k) for k in obj if k != entry]
        obj = obj[entry]
    bad = [str(k) for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointReadError(f"{path}: not a state dict: {len(bad)} entries are not tensors (e.g. {bad[:3]})")
    return obj, extras


class SafetensorsStateDict(Mapping[str, LazyTensor], _Releasable):
    """The tensors of one or more safetensors files, by header; data read on demand.

    ``keys`` restricts the view to those tensors: files that hold none of them are never opened (the
    index of a Hugging Face folder says which file holds which key).
    """

    def __init__(self, files: Mapping[str, Path] | list[Path], keys: set[str] | None = None) -> None:
        self._handles: dict[Path, object] = {}
        self._meta: dict[str, tuple[Path, torch.Size, torch.dtype]] = {}
        if isinstance(files, Mapping):  # key -> file, from an index: open only the files needed
            by_file: dict[Path, list[str]] = {}
            for key, file in files.items():
                if keys is None or key in keys:
                    by_file.setdefault(file, []).append(key)
            paths = list(by_file)
        else:
            paths = list(files)
        for path in paths:
            self._read_header(path, keys)
        self.release()

    def _read_header(self, path: Path, keys: set[str] | None) -> None:
        from safetensors import safe_open

        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (listed in the folder's index)")
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    if keys is not None and key not in keys:
                        continue
                    piece = f.get_slice(key)
                    dtype = SAFETENSORS_DTYPES.get(piece.get_dtype())
                    if dtype is None:
                        raise CheckpointReadError(f"{path}: tensor {key} has unsupported dtype {piece.get_dtype()}")
                    self._meta[key] = (path, torch.Size(piece.get_shape()), dtype)
        except CheckpointReadError:
            raise
        except Exception as err:  # safetensors raises SafetensorError for bad headers / sizes
            raise CheckpointReadError(f"{path}: not a readable safetensors file (truncated?): {err}") from None

    def _get(self, key: str) -> Tensor:
        from safetensors import safe_open

        path = self._meta[key][0]
        if path not in self._handles:
            self._handles[path] = safe_open(str(path), framework="pt")
        try:
            return self._handles[path].get_tensor(key)  # type: ignore[attr-defined]
        except Exception as err:
            raise CheckpointReadError(f"{path}: cannot read tensor {key}: {err}") from None

    def release(self) -> None:
        self._handles.clear()

    def __getitem__(self, key: str) -> LazyTensor:
        path, shape, dtype = self._meta[key]
        return LazyTensor(shape, dtype, lambda: self._get(key), f"{path.name}:{key}")

    def __iter__(self) -> Iterator[str]:
        return iter(self._meta)

    def __len__(self) -> int:
        return len(self._meta)


class _MergedStateDict(Mapping[str, LazyTensor], _Releasable):
    """Several sources as one mapping (the shards of a ``pytorch_model-*.bin`` folder)."""

    def __init__(self, parts: list[Mapping[str, LazyTensor]]) -> None:
        self.parts = parts
        self._where: dict[str, Mapping[str, LazyTensor]] = {}
        for part in parts:
            for key in part:
                self._where[key] = part

    def release(self) -> None:
        for part in self.parts:
            if isinstance(part, _Releasable):
                part.release()

    def __getitem__(self, key: str) -> LazyTensor:
        return self._where[key][key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def open_state_dict(path: str | Path, entry: str | None = "auto") -> Mapping[str, LazyTensor]:
    """A lazy state dict of a ``.pth``/``.bin`` pickle or a ``.safetensors`` file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointReadError(f"{path}: is a folder; this option takes a single checkpoint file")
    if path.suffix == ".safetensors":
        return SafetensorsStateDict([path])
    return PthStateDict(path, entry)


@dataclass
class HfFolderWeights:
    """The weights of a Hugging Face model folder: a lazy state dict plus what was left unread."""

    tensors: Mapping[str, LazyTensor]
    unread: list[str]  # keys listed in the index but outside ``select`` (their files are never opened)
    files: list[Path]  # weight files actually read


def open_hf_folder(folder: str | Path, select: Callable[[str], bool] = lambda key: True) -> HfFolderWeights:
    """Lazy access to a Hugging Face folder's weights (safetensors preferred, ``.bin`` pickles otherwise).

    Only keys for which ``select(key)`` holds are exposed; with an index, files holding none of them
    are not opened at all (e.g. the 11B T5 shards of a BLIP-2 folder).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    if (folder / HF_SAFETENSORS_INDEX).is_file() or (folder / HF_SAFETENSORS_SINGLE).is_file():
        weight_map = _weight_map(folder, HF_SAFETENSORS_INDEX, HF_SAFETENSORS_SINGLE)
        if weight_map is None:  # single file: read its header
            whole = SafetensorsStateDict([folder / HF_SAFETENSORS_SINGLE])
            keys = {k for k in whole if select(k)}
            unread = sorted(k for k in whole if not select(k))
            return HfFolderWeights(SafetensorsStateDict([folder / HF_SAFETENSORS_SINGLE], keys), unread,
                                   [folder / HF_SAFETENSORS_SINGLE])
        wanted = {k for k in weight_map if select(k)}
        unread = sorted(k for k in weight_map if not select(k))
        tensors = SafetensorsStateDict(weight_map, wanted)
        return HfFolderWeights(tensors, unread, sorted({weight_map[k] for k in wanted}))
    if (folder / HF_BIN_INDEX).is_file() or (folder / HF_BIN_SINGLE).is_file():
        weight_map = _weight_map(folder, HF_BIN_INDEX, HF_BIN_SINGLE)
        files = sorted(set(weight_map.values())) if weight_map else [folder / HF_BIN_SINGLE]
        parts, unread, used = [], [], []
        for file in files:
            if weight_map is not None and not any(select(k) for k, f in weight_map.items() if f == file):
                unread += [k for k, f in weight_map.items() if f == file]
                continue
            part = PthStateDict(file, entry=None)
            unread += [k for k in part if not select(k)]
            parts.append(_Filtered(part, select))
            used.append(file)
        return HfFolderWeights(_MergedStateDict(parts), sorted(unread), used)
    raise CheckpointReadError(
        f"{folder}: no weights found (expected {HF_SAFETENSORS_SINGLE}, {HF_SAFETENSORS_INDEX}, "
        f"{HF_BIN_SINGLE} or {HF_BIN_INDEX})"
    )


class _Filtered(Mapping[str, LazyTensor], _Releasable):
    def __init__(self, inner: PthStateDict, select: Callable[[str], bool]) -> None:
        self.inner = inner
        self._keys = [k for k in inner if select(k)]

    def release(self) -> None:
        self.inner.release()

    def __getitem__(self, key: str) -> LazyTensor:
        if key not in self._keys:
            raise KeyError(key)
        return self.inner[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def _weight_map(folder: Path, index_name: str, single_name: str) -> dict[str, Path] | None:
    index = folder / index_name
    if not index.is_file():
        return None
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointReadError(f"{index}: not a valid weight index ({err})") from None
    return {key: folder / name for key, name in weight_map.items()}


def release_all(*sources: object) -> None:
    """Drop the open files/mappings of every releasable source given."""
    for source in sources:
        if isinstance(source, _Releasable):
            source.release()


# ----------------------------------------------------------------------------------- what is this file?
# Evidence for each kind: a key pattern that only that kind of file has (buffers such as
# ``*.position_ids`` appear in several kinds and are not evidence).
_KIND_PATTERNS: dict[str, re.Pattern] = {
    "vl": re.compile(r"^(video_Qformer\.bert\.encoder\.|video_query_tokens$|video_frame_position_embedding\.|llama_proj\.)"),
    "al": re.compile(r"^(audio_Qformer\.bert\.encoder\.|audio_query_tokens$|audio_position_embedding\.|audio_llama_proj\.)"),
    "eva": re.compile(r"^(blocks\.\d+\.attn\.qkv\.weight|patch_embed\.proj\.weight)$"),
    "blip2": re.compile(r"^(Qformer\.bert\.encoder\.|query_tokens$|ln_vision\.)"),
    "imagebind": re.compile(r"^modality_(trunks|preprocessors|heads|postprocessors)\."),
    "llm": re.compile(r"^model\.layers\.\d+\.self_attn\.q_proj\.weight$"),
}

# What each kind is, and which option takes it (the CLI's names).
CHECKPOINT_KINDS: dict[str, tuple[str, str]] = {
    "vl": ("a Video-LLaMA vision-language (VL) checkpoint", "--vl-ckpt"),
    "al": ("a Video-LLaMA audio-language (AL) checkpoint", "--al-ckpt"),
    "eva": ("an EVA ViT-g checkpoint (eva_vit_g.pth)", "--eva-vit"),
    "blip2": ("a LAVIS BLIP-2 checkpoint (blip2_pretrained_*.pth)", "--blip2"),
    "imagebind": ("an ImageBind checkpoint (imagebind_huge.pth)", "--imagebind"),
    "llm": ("LLaMA/Vicuna language-model weights", "--llm (a Hugging Face folder)"),
    "minigpt4": ("MiniGPT-4's pretrained projection (pretrained_minigpt4.pth: only llama_proj)", "nothing: it only initialises VL training"),
}


def identify_checkpoint(keys) -> set[str]:
    """The kinds of checkpoint whose characteristic keys appear in ``keys`` (possibly several)."""
    keys = list(keys)
    kinds = {kind for kind, pattern in _KIND_PATTERNS.items() if any(pattern.search(k) for k in keys)}
    if kinds == {"vl"} and all(k.startswith("llama_proj.") or k.endswith(".position_ids") or "inv_freq" in k
                               for k in keys):
        return {"minigpt4"}
    return kinds


def expect_checkpoint(keys, kind: str, path: str | Path) -> None:
    """Raise :class:`WrongCheckpointError` if ``keys`` do not look like a ``kind`` checkpoint."""
    found = identify_checkpoint(keys)
    if kind in found:
        return
    what, option = CHECKPOINT_KINDS[kind]
    if found:
        other = sorted(found)[0]
        other_what, other_option = CHECKPOINT_KINDS[other]
        raise WrongCheckpointError(
            f"{path}: given as {option}, which takes {what}, but it looks like {other_what}; pass it as {other_option}"
        )
    sample = ", ".join(list(keys)[:3]) or "no tensors"
    raise WrongCheckpointError(f"{path}: given as {option}, which takes {what}, but none of its keys fit ({sample}, ...)")

