"""ImageBind-Huge audio and vision encoders in plain PyTorch.

Video-LLaMA's audio branch is built on two frozen encoders of ImageBind-Huge (Girdhar et al. 2023):

* the **audio** encoder, which turns a 2-second log-mel clip (1, 128, 204) into one 1024-d embedding
  (L2-normalised and multiplied by a fixed logit scale of 20) at inference time;
* the **vision** encoder (ViT-H/14 on a 2-frame tubelet), which the audio branch is *trained* through,
  because ImageBind maps both modalities into the same embedding space.

Both are the same pre-norm transformer ("trunk") between a modality-specific patch stem and a head::

    audio:  mel (N,1,128,204) -> Conv2d k16 s10 -> LN -> 12x19=228 patches + CLS + pos-embed
            -> 12 blocks (768 wide, 12 heads, learned bias_k/bias_v, drop-path 0..0.1)
            -> LN -> CLS -> Linear(768->1024) -> L2-normalise -> x 20
    vision: image (N,3,224,224) -> repeat into 2 frames -> Conv3d k(2,14,14) -> 256 patches + CLS
            + pos-embed -> ln_pre -> 32 blocks (1280 wide, 16 heads) -> LN -> CLS
            -> Linear(1280->1024) -> L2-normalise

The weights load from the official ``imagebind_huge.pth`` through the explicit key table in
``videollama/convert/imagebind.py``; our module names are our own, readable ones.

Two faithful-but-surprising details of the official model are kept on purpose:

* the audio stem's LayerNorm uses torch's default eps (1e-5), every other LayerNorm uses 1e-6;
* the audio logit scale is a *buffer* (``log_logit_scale``, shape ()), applied as
  ``min(exp(log_logit_scale), 100)``; it comes from the checkpoint like every other tensor.

One deliberate difference (training only, the encoders are frozen in Video-LLaMA): the official
trunk runs sequence-first, so its drop-path draws one keep/drop decision per *token position*; ours
runs batch-first and draws one per *sample*, the usual stochastic-depth semantics. In ``eval()``
both are the identity.

Run the tests: ``pytest tests/test_imagebind.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ImageBindConfig

# The audio stem's LayerNorm is built with torch's default eps in the official model; the trunk,
# ln_pre and head norms use 1e-6 (``ImageBindConfig.layer_norm_eps``).
AUDIO_STEM_NORM_EPS = 1e-5
# ``LearnableLogitScaling`` clips exp(log_logit_scale) at this value.
MAX_LOGIT_SCALE = 100.0
NUM_CLS_TOKENS = 1
AUDIO_IN_CHANNELS = 1
IMAGE_CHANNELS = 3


def audio_patch_grid(cfg: ImageBindConfig) -> tuple[int, int]:
    """(rows, cols) of audio patches: a k x k conv with stride s over (mel_bins, frames); 12 x 19."""
    rows = (cfg.audio_mel_bins - cfg.audio_kernel) // cfg.audio_stride + 1
    cols = (cfg.audio_frames - cfg.audio_kernel) // cfg.audio_stride + 1
    return rows, cols


def vision_patch_grid(cfg: ImageBindConfig) -> tuple[int, int, int]:
    """(time, rows, cols) of vision patches for one image repeated into a tubelet; (1, 16, 16)."""
    side = cfg.image_size // cfg.patch_size
    return 1, side, side


def _at_least_fp32(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _l2_normalize(x: Tensor) -> Tensor:
    """L2-normalise the last axis in at least float32 (a bf16 norm is off by ~1%)."""
    return F.normalize(x.to(_at_least_fp32(x.dtype)), dim=-1)


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a residual branch per sample with probability ``rate``."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop-path rate must be in [0, 1), got {rate}")
        self.rate = rate

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # (N, 1, 1)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate:.4f}"


class Mlp(nn.Module):
    """fc1 -> GELU (exact) -> fc2."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)), each with drop-path.

    ``attn`` is a plain ``nn.MultiheadAttention`` so the official parameter names (``in_proj_weight``,
    ``in_proj_bias``, ``bias_k``, ``bias_v``, ``out_proj``) are kept. With ``add_bias_kv`` a learned
    key and value are appended to every sequence (after the input projection), so each query can
    also attend to a learned "null" slot.
    """

    def __init__(self, width: int, heads: int, *, mlp_ratio: float, add_bias_kv: bool, drop_path: float,
                 eps: float) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.attn = nn.MultiheadAttention(width, heads, bias=True, add_bias_kv=add_bias_kv, batch_first=True)
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = Mlp(width, int(mlp_ratio * width))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:  # x: (N, L, D)
        h = self.norm1(x)
        x = x + self.drop_path(self.attn(h, h, h, need_weights=False)[0])
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _build_blocks(cfg: ImageBindConfig, width: int, layers: int, heads: int, *, add_bias_kv: bool,
                  drop_path: float) -> nn.ModuleList:
    # "Progressive" stochastic depth as in the official trunk: 0 at block 0, ``drop_path`` at the last.
    # (Plain Python, not torch.linspace, so the model can be built under a 'meta' device context.)
    rates = [drop_path * i / (layers - 1) if layers > 1 else 0.0 for i in range(layers)]
    return nn.ModuleList(
        Block(width, heads, mlp_ratio=cfg.mlp_ratio, add_bias_kv=add_bias_kv, drop_path=rate, eps=cfg.layer_norm_eps)
        for rate in rates
    )


class _ImageBindEncoder(nn.Module):
    """What the two encoders share: CLS + pos-embed, the blocks, the head and the initialisation."""

    cls_token: nn.Parameter
    pos_embed: nn.Parameter
    blocks: nn.ModuleList
    head_norm: nn.LayerNorm
    head: nn.Linear

    def _init_tokens(self, width: int, num_tokens: int) -> None:
        self.cls_token = nn.Parameter(torch.empty(1, NUM_CLS_TOKENS, width))  # (1, 1, D)
        self.pos_embed = nn.Parameter(torch.empty(1, num_tokens, width))  # (1, 1 + patches, D)

    def _init_head(self, cfg: ImageBindConfig, width: int) -> None:
        self.head_norm = nn.LayerNorm(width, eps=cfg.layer_norm_eps)
        self.head = nn.Linear(width, cfg.embed_dim, bias=False)

    @torch.no_grad()
    def _reset_parameters(self) -> None:
        """Initialise like the official model (only matters for random test models and training).

        Trunk linears: Xavier-uniform with zero bias ("jax" style); LayerNorms: ones/zeros;
        ``in_proj``/``bias_k``/``bias_v``: nn.MultiheadAttention's own init; CLS and pos-embed:
        N(0, 1) / sqrt(width) ("openclip" style); stem conv and head: torch defaults.
        """
        width = self.cls_token.shape[-1]
        for block in self.blocks:
            for module in block.modules():
                if isinstance(module, nn.Linear):  # includes attn.out_proj
                    nn.init.xavier_uniform_(module.weight)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
        nn.init.normal_(self.cls_token, std=width**-0.5)
        nn.init.normal_(self.pos_embed, std=width**-0.5)

    def _trunk(self, patches: Tensor) -> Tensor:
        """Patch tokens (N, P, D) -> head-normalised tokens (N, 1 + P, D), CLS first."""
        cls = self.cls_token.expand(patches.shape[0], -1, -1)  # (N, 1, D)
        x = torch.cat([cls, patches], dim=1) + self.pos_embed  # (N, 1 + P, D)
        x = self.pre_trunk(x)
        for block in self.blocks:
            x = block(x)
        return self.head_norm(x)

    def _trunk_and_head(self, patches: Tensor) -> Tensor:
        """Patch tokens (N, P, D) -> head-normalised CLS feature (N, D)."""
        return self._trunk(patches)[:, 0]  # (N, D): the CLS token

    def pre_trunk(self, x: Tensor) -> Tensor:
        """Applied to the tokens before the blocks: nothing for audio, ``ln_pre`` for vision."""
        return x


class ImageBindAudioEncoder(_ImageBindEncoder):
    """ImageBind-Huge audio encoder: log-mel clips -> (CLS feature, embedding x logit scale).

    Args:
        cfg: the ImageBind widths; ``audio_*`` fields, ``embed_dim``, ``mlp_ratio``, ``layer_norm_eps``.
    """

    def __init__(self, cfg: ImageBindConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.grid = audio_patch_grid(cfg)
        num_patches = self.grid[0] * self.grid[1]
        width = cfg.audio_width
        self.stem = nn.Conv2d(AUDIO_IN_CHANNELS, width, kernel_size=cfg.audio_kernel, stride=cfg.audio_stride,
                              bias=False)
        self.stem_norm = nn.LayerNorm(width, eps=AUDIO_STEM_NORM_EPS)
        self._init_tokens(width, NUM_CLS_TOKENS + num_patches)
        self.blocks = _build_blocks(cfg, width, cfg.audio_layers, cfg.audio_heads, add_bias_kv=True,
                                    drop_path=cfg.audio_drop_path)
        self._init_head(cfg, width)
        # A fixed (non-learnable) scale, stored like the official file: log of the scale, shape ().
        self.register_buffer("log_logit_scale", torch.tensor(math.log(cfg.audio_logit_scale)))
        self._reset_parameters()

    def _apply(self, fn, recurse: bool = True):
        # Keep the logit-scale buffer in (at least) float32 when the module is cast to bf16/fp16:
        # log(20) rounds to 3.0 in bf16, i.e. a scale of 20.09 instead of 20.
        before = self.log_logit_scale
        super()._apply(fn, recurse)
        after = self.log_logit_scale
        if after.dtype.is_floating_point and after.dtype != _at_least_fp32(after.dtype):
            self.log_logit_scale = before.to(device=after.device, dtype=_at_least_fp32(before.dtype))
        return self

    @property
    def logit_scale(self) -> Tensor:
        return self.log_logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(self, mel: Tensor) -> tuple[Tensor, Tensor]:
        """Encode log-mel clips.

        Args:
            mel: (N, 1, mel_bins, frames), normalised fbank; (B, S, 1, mel_bins, frames) is also
                accepted and gives outputs shaped (B, S, ...).
        Returns:
            ``(cls_features, embedding)``: the head-normalised CLS token before the projection,
            (N, audio_width), which Video-LLaMA's ``get_audio_feature`` returns first; and the
            projected embedding, L2-normalised then multiplied by the logit scale (norm 20), (N, embed_dim).
        """
        lead = self._check_mel(mel)
        mel = mel.reshape(-1, *mel.shape[-3:]).to(self.stem.weight.dtype)  # (N, 1, M, F)
        patches = self.stem(mel).flatten(2).transpose(1, 2)  # (N, D, R, C) -> (N, R*C, D)
        cls = self._trunk_and_head(self.stem_norm(patches))  # (N, D)
        embedding = self.head(cls)  # (N, E)
        embedding = (_l2_normalize(embedding) * self.logit_scale.to(_at_least_fp32(embedding.dtype))).to(cls.dtype)
        return cls.reshape(*lead, -1), embedding.reshape(*lead, -1)

    def _check_mel(self, mel: Tensor) -> tuple[int, ...]:
        expected = (AUDIO_IN_CHANNELS, self.cfg.audio_mel_bins, self.cfg.audio_frames)
        if mel.ndim not in (4, 5) or tuple(mel.shape[-3:]) != expected:
            raise ValueError(
                f"ImageBind audio encoder expects mel of shape (N, {', '.join(map(str, expected))}) "
                f"or (B, S, {', '.join(map(str, expected))}), got {tuple(mel.shape)}"
            )
        return tuple(mel.shape[:-3])


class ImageBindVisionEncoder(_ImageBindEncoder):
    """ImageBind-Huge vision encoder (ViT-H/14 on a 2-frame tubelet): images -> unit-norm embeddings.

    Args:
        cfg: the ImageBind widths; ``vision_*`` fields, ``image_size``, ``patch_size``, ``embed_dim``.
    """

    def __init__(self, cfg: ImageBindConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.grid = vision_patch_grid(cfg)
        num_patches = self.grid[0] * self.grid[1] * self.grid[2]
        width = cfg.vision_width
        kernel = (cfg.vision_time_kernel, cfg.patch_size, cfg.patch_size)
        self.stem = nn.Conv3d(IMAGE_CHANNELS, width, kernel_size=kernel, stride=kernel, bias=False)
        self._init_tokens(width, NUM_CLS_TOKENS + num_patches)
        self.pre_norm = nn.LayerNorm(width, eps=cfg.layer_norm_eps)  # "ln_pre"
        self.blocks = _build_blocks(cfg, width, cfg.vision_layers, cfg.vision_heads, add_bias_kv=False,
                                    drop_path=0.0)
        self._init_head(cfg, width)
        self._reset_parameters()

    def pre_trunk(self, x: Tensor) -> Tensor:
        return self.pre_norm(x)

    def forward(self, images: Tensor) -> Tensor:
        """Encode CLIP-normalised images.

        Args:
            images: (N, 3, H, W), or (N, 3, T, H, W) with T = 1 or T = vision_time_kernel (2);
                a single frame is repeated to fill the tubelet, as the official ``PadIm2Video``.
        Returns:
            (N, embed_dim) L2-normalised embeddings.
        """
        embedding = self.head(self.tokens(images)[:, 0])  # (N, E) from the CLS token
        return _l2_normalize(embedding).to(embedding.dtype)

    def tokens(self, images: Tensor) -> Tensor:
        """Head-normalised tokens (N, 1 + P, vision_width) of ``images`` (as :meth:`forward`), CLS first."""
        frames = self.cfg.vision_time_kernel
        if images.ndim == 4:
            images = images.unsqueeze(2)  # (N, 3, 1, H, W)
        size = self.cfg.image_size
        if images.ndim != 5 or images.shape[1] != IMAGE_CHANNELS or tuple(images.shape[-2:]) != (size, size) \
                or images.shape[2] not in (1, frames):
            raise ValueError(
                f"ImageBind vision encoder expects images of shape (N, 3, {size}, {size}) or "
                f"(N, 3, T, {size}, {size}) with T in (1, {frames}), got {tuple(images.shape)}"
            )
        if images.shape[2] == 1:
            images = images.expand(-1, -1, frames, -1, -1)  # (N, 3, T, H, W)
        patches = self.stem(images.to(self.stem.weight.dtype))  # (N, D, 1, H/14, W/14)
        patches = patches.flatten(2).transpose(1, 2)  # (N, 256, D)
        return self._trunk(patches)
