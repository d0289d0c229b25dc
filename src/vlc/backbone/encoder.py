"""Vision encoder: any timm model, features of one chosen layer, reshaped to the patch grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlc.tokens import FrameTokens


class VisionEncoder(nn.Module):
    """Turns frames into ``FrameTokens``.

    name:            a timm model name, e.g. ``vit_large_patch14_clip_336.openai`` (CLIP ViT-L/14-336), or
                     ``local-dir:/path/to/folder`` for a folder timm saved (``config.json`` + weights).
    pretrained:      load weights: from the hub when ``checkpoint_path`` is None, else from that file.
    checkpoint_path: a local ``.safetensors``/``.pth`` weight file for ``name`` (no download).
    layer:           which block's output to use; -2 is the penultimate one, as LLaVA and Video-XL use.
    img_size:        frames are resized to this square size before encoding (None: the model's own).
    pool_stride:     2D average pool of the patch grid after the layer (Video-XL: 2 → 576 to 144 tokens).
                     A stride that does not divide the grid keeps the partial last row/column, averaged
                     over the patches it has (SigLIP-384: 27x27 → 14x14 = 196 tokens).
    frames_per_pass: encode at most this many frames per forward, to bound activation memory.
    model_kwargs:    extra ``timm.create_model`` arguments (the tiny default sets its geometry here).
    """

    def __init__(
        self,
        name: str,
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        layer: int = -2,
        img_size: int | None = None,
        pool_stride: int = 1,
        frames_per_pass: int = 256,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        kwargs = dict(model_kwargs or {})
        if img_size is not None:
            kwargs["img_size"] = img_size
        if checkpoint_path is not None:
            path = Path(checkpoint_path).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"encoder.checkpoint_path: no weight file at {path}")
            # timm's own route for local weights: the pretrained config points at a file.
            kwargs["pretrained_cfg_overlay"] = dict(file=str(path))
            pretrained = True
        try:
            self.model = timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)
        except RuntimeError as err:
            if "Unknown model" in str(err):
                raise ValueError(f"encoder.name: timm has no model {name!r} ({err})") from err
            raise
        if not hasattr(self.model, "forward_intermediates"):
            raise ValueError(f"encoder.name: timm model {name!r} has no forward_intermediates(); use a ViT-style model")
        num_blocks = len(self.model.blocks)
        if not -num_blocks <= layer < num_blocks:
            raise ValueError(f"encoder.layer={layer} is out of range for {name!r} with {num_blocks} blocks")
        self.layer = layer % num_blocks
        # Blocks after the chosen layer (and the head) are never used: drop them.
        self.model.prune_intermediate_layers([self.layer], prune_norm=True, prune_head=True)
        self.pool_stride = pool_stride
        self.frames_per_pass = frames_per_pass

        cfg = self.model.pretrained_cfg
        self.img_size = int(img_size or self.model.patch_embed.img_size[0])
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.5, 0.5, 0.5))).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.5, 0.5, 0.5))).view(1, 3, 1, 1), persistent=False)
        gh, gw = self.model.patch_embed.grid_size
        if pool_stride < 1:
            raise ValueError(f"encoder.pool_stride={pool_stride}; use 1 (no pooling) or more")
        self.grid = (-(-gh // pool_stride), -(-gw // pool_stride))  # ceil: no patch is dropped
        self.dim = int(self.model.embed_dim)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each ViT block in the backward pass instead of keeping its activations (timm's own switch)."""
        self.model.set_grad_checkpointing(enable)

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[0] * self.grid[1]

    def normalize(self, pixels: Tensor) -> Tensor:
        """uint8 (..., 3, H, W) → float (..., 3, S, S) resized to img_size and normalised."""
        lead = pixels.shape[:-3]
        x = pixels.reshape(-1, *pixels.shape[-3:]).float().div_(255.0)
        if x.shape[-2:] != (self.img_size, self.img_size):
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        return x.reshape(*lead, *x.shape[-3:])

    def encode_normalized(self, x: Tensor) -> Tensor:
        """(F, 3, S, S) normalised frames → (F, h*w, Dv) patch tokens of the chosen layer."""
        outs = []
        for chunk in x.split(self.frames_per_pass):
            (feat,) = self.model.forward_intermediates(
                chunk, indices=[self.layer], norm=False, output_fmt="NCHW", intermediates_only=True
            )  # (f, Dv, gh, gw), prefix (CLS) tokens already dropped
            if self.pool_stride > 1:
                feat = F.avg_pool2d(feat, self.pool_stride, ceil_mode=True)
            outs.append(feat.flatten(2).transpose(1, 2))  # (f, h*w, Dv)
        return torch.cat(outs)

    def forward(self, pixels: Tensor, frame_mask: Tensor, times: Tensor) -> tuple[FrameTokens, Tensor]:
        """pixels uint8 (B, T, 3, H, W) → (FrameTokens (B, T, N, Dv), normalised pixels (B, T, 3, S, S)).

        Padded frames (frame_mask False) are not encoded: their tokens are zeros with a False mask.
        """
        B, T = pixels.shape[:2]
        x = self.normalize(pixels)  # (B, T, 3, S, S)
        flat_mask = frame_mask.reshape(-1)
        feats = self.encode_normalized(x.reshape(B * T, *x.shape[2:])[flat_mask])  # (F_real, N, Dv)
        tokens = feats.new_zeros(B * T, self.tokens_per_frame, self.dim)
        tokens[flat_mask] = feats
        token_mask = frame_mask[:, :, None].expand(B, T, self.tokens_per_frame)
        ft = FrameTokens(tokens.view(B, T, self.tokens_per_frame, self.dim), token_mask.clone(), times, self.grid)
        return ft, x
