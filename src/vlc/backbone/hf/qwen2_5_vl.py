"""Qwen2.5-VL (``family: qwen2_5_vl``) through ``Qwen2_5_VLForConditionalGeneration`` and its processor.

The model's own video layout, which ``encode → project → visual_span`` rebuild:

- frames are resized by the processor's ``smart_resize`` (sides multiples of 28, pixel count within the
  processor's min/max) and cut into 14 px patches; two consecutive frames form one *temporal group*
  (temporal patch size 2: the patch embedding is a Conv3d over both); an odd count repeats the last;
- the vision tower attends within each temporal group (windowed blocks and a few full blocks);
- the merger concatenates each 2×2 block of patches and maps it to the LLM width: (h/2)·(w/2) tokens
  per temporal group;
- the chat template writes ``<|vision_start|><|video_pad|><|vision_end|>``; the processor expands the
  pad into the tokens, read with 3-D M-RoPE: a token of group g at merged-grid cell (r, c) sits at
  (s + τ_g, s + r, s + c), s = the position after ``<|vision_start|>``, τ_g = ⌊(t_g − t_0) ·
  tokens_per_second⌋ (Qwen's g · second_per_grid · tokens_per_second for evenly spaced frames);
  text uses one position in all three sections.

The prompt is cut from the processor's chat template at the pad: ``<|vision_start|>`` ends the
prefix, ``<|vision_end|>`` opens the question, and the visual span is the tokens alone, with positions
(τ, r, c) counted from 0 at the first (the pipeline adds the prefix length).

Where the split between encode and project lies: ``encode`` returns the tower's *pre-merge* patches,
FrameTokens (B, T', h·w, vision_dim) on grid (h, w) with T' temporal groups, each timed by its first
frame; ``project`` is the merger, (B, T', h/2·w/2, hidden) on grid (h/2, w/2). So a compressor on
"encoder" sees the 14 px patches of each temporal group, one on "projected" the LLM's tokens.

Positions of compressed tokens (docs/mrope.md): a kept token keeps its (τ, row, column), computed from
its group's time and its cell on the grid FrameTokens holds when it reaches ``visual_span`` (a pooled
grid is a smaller grid, as Qwen would see a smaller frame; grid None lays the tokens out as one row).

Text after the video (``<|vision_end|>``, the question) continues one past the largest position, as
Qwen2.5-VL's release (and vLLM) number it and as ``VideoPipeline`` continues any M-RoPE span.
transformers 5.x's ``get_rope_index`` continues at s + max(h/2, w/2) instead, which ignores the
temporal extent; the two agree whenever τ of the last group ≤ max(h/2, w/2) − 1 (docs/mrope.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils.generic import get_max_seqlen
from transformers.vision_utils import get_vision_attention_seqlens, get_vision_position_ids, get_vision_window_index

from vlc.backbone.base import Backbone, VisualSpan
from vlc.backbone.hf.loading import pretrained_kwargs, prompt_from_chat_template, resolve_source
from vlc.model.prompt import PromptBuilder
from vlc.tokens import FrameTokens

# Float error in the frames' times must not move a group down a temporal position.
TIME_TOLERANCE = 1e-3


class LanguageModel(nn.Module):
    """Qwen2.5-VL's language model and lm_head as a causal LM (the same modules, no copies), so that
    the vision side stays out of ``llm`` when components are frozen or wrapped. transformers has no
    causal-LM class for this text model (``loading.causal_lm_over`` needs one), hence this view."""

    supports_gradient_checkpointing = True

    def __init__(self, model: nn.Module, lm_head: nn.Module, config) -> None:
        super().__init__()
        self.model, self.lm_head, self.config = model, lm_head, config

    def get_decoder(self) -> nn.Module:
        return self.model

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute each decoder layer in backward (the language model's own switch)."""
        self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=activation_checkpointing_kwargs)

    def forward(
        self,
        input_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values=None,
        use_cache: bool | None = None,
        logits_to_keep: int | Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        out = self.model(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,  # (B, L), or (3, B, L) for M-RoPE
            cache=past_key_values,
            use_cache=use_cache,
            **kwargs,
        )
        hidden = out.last_hidden_state  # (B, L, D)
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        return CausalLMOutputWithPast(logits=self.lm_head(hidden[:, keep]), cache=out.cache)


class VisionTower(nn.Module):
    """Qwen2.5-VL's vision tower without its merger: the model's own patch embedding, rotary table and
    blocks, run in the tower's own order (the blocks attend within windows of merge units, permuted
    in and back out), so the merger can be the separate projector."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.patch_embed, self.rotary_pos_emb, self.blocks = visual.patch_embed, visual.rotary_pos_emb, visual.blocks
        self.config = visual.config

    def forward(self, pixel_values: Tensor, grid_thw: Tensor) -> Tensor:
        """(P, 3·2·14·14) processor patches of all videos, (V, 3) grids → (P, vision_dim), same order."""
        cfg = self.config
        unit = cfg.spatial_merge_size**2
        position_ids = get_vision_position_ids(grid_thw, cfg.spatial_merge_size)
        cu_full, max_full = get_vision_attention_seqlens(grid_thw, cfg)
        window_index, cu_window = get_vision_window_index(
            grid_thw, spatial_merge_size=cfg.spatial_merge_size, window_size=cfg.window_size, patch_size=cfg.patch_size
        )
        max_window = get_max_seqlen(cu_window, cfg)
        P = pixel_values.shape[0]

        def to_windows(x: Tensor) -> Tensor:  # (P, ...) in merge units, reordered window by window
            return x.reshape(P // unit, unit, *x.shape[1:])[window_index].reshape(P, *x.shape[1:])

        h = to_windows(self.patch_embed(pixel_values))  # (P, Dv)
        rotary = tuple(to_windows(f) for f in self.rotary_pos_emb(h, position_ids))
        for i, block in enumerate(self.blocks):
            full = i in cfg.fullatt_block_indexes
            h = block(h, cu_seqlens=cu_full if full else cu_window, max_seqlen=max_full if full else max_window,
                      position_embeddings=rotary)
        back = torch.argsort(window_index)
        return h.reshape(P // unit, unit, -1)[back].reshape(P, -1)


class Qwen25VLBackbone(Backbone):
    """Qwen2.5-VL as a vlc Backbone (module docstring). Parts (shared with ``hf_model``, the loaded
    ``Qwen2_5_VLForConditionalGeneration``): ``encoder`` the tower without the merger, ``projector``
    the merger, ``llm`` the language model with its head.

    frame_size: the (height, width) ``tokens_per_frame`` is quoted for (frames of other sizes work).
    """

    # Temporal positions count from the video's first group and frames pair up across a chunk edge:
    # a cache compressor gets the whole video at once (docs/mrope.md).
    streams = False

    family = "qwen2_5_vl"

    def __init__(self, model: Qwen2_5_VLForConditionalGeneration, processor, frame_size: Sequence[int] = (448, 448)
                 ) -> None:
        super().__init__()
        cfg = model.config
        visual = model.model.visual
        self.__dict__["hf_model"] = model  # not a submodule: its parts are registered below, once
        self.__dict__["processor"] = processor
        self.encoder = VisionTower(visual)
        self.projector = visual.merger
        self.llm = LanguageModel(model.model.language_model, model.lm_head, cfg.text_config)
        self.video_processor = processor.video_processor
        self.tokenizer = processor.tokenizer
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        vcfg = cfg.vision_config
        self.merge, self.temporal_patch = vcfg.spatial_merge_size, vcfg.temporal_patch_size
        self.tokens_per_second = float(vcfg.tokens_per_second)
        self.vision_dim, self.hidden_size = vcfg.hidden_size, cfg.text_config.hidden_size
        self.pixel_std = tuple(float(s) for s in self.video_processor.image_std)
        self.tokens_per_frame = self.patches_per_group(*frame_size)
        self.prompt_template = prompt_from_chat_template(processor, processor.video_token)
        self.prompt = PromptBuilder(self.tokenizer, **self.prompt_template)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        dtype: str = "bfloat16",
        attn_implementation: str = "auto",
        frame_size: Sequence[int] = (448, 448),
        min_pixels: int | None = None,
        max_pixels: int | None = None,
    ) -> Qwen25VLBackbone:
        """A Qwen2.5-VL checkpoint (hub name or local folder) and its processor. ``min_pixels`` /
        ``max_pixels`` override the video processor's per-frame pixel bounds (its ``size``)."""
        source = resolve_source(name_or_path)
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            source, **pretrained_kwargs(dtype, attn_implementation)
        )
        processor = AutoProcessor.from_pretrained(source)
        size = processor.video_processor.size
        bounds = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
        processor.video_processor.size = type(size)(**{**dict(size), **{k: int(v) for k, v in bounds.items() if v}})
        return cls(model.eval(), processor, frame_size)

    def set_grad_checkpointing(self) -> None:
        super().set_grad_checkpointing()
        self.hf_model.model.visual.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}
        )

    @property
    def llm_tokens_per_frame(self) -> int:
        """LLM tokens per input frame at ``frame_size`` with no compressor (a group's tokens over 2 frames)."""
        return self.tokens_per_frame // self.merge**2 // self.temporal_patch

    def patches_per_group(self, height: int, width: int) -> int:
        """Pre-merge patches ``encode`` gives one temporal group of (height, width) frames (÷4 reach the LLM)."""
        return int(self.video_processor.get_num_of_video_patches(self.temporal_patch, int(height), int(width), {}))

    # ------------------------------------------------------------------ encode / project

    def encode(self, pixels: Tensor, frame_mask: Tensor, times: Tensor) -> tuple[FrameTokens, Tensor]:
        """uint8 (B, T, 3, H, W) → FrameTokens (B, T', h·w, vision_dim) of pre-merge patches, T' = ⌈T/2⌉
        temporal groups timed by their first frame; and each group's pixels as the tower saw them
        (normalised, resized, the mean of its two frames): (B, T', 3, 14h, 14w)."""
        B = pixels.shape[0]
        frame_mask = frame_mask.bool()
        videos = [pixels[b][frame_mask[b]] for b in range(B)]  # (n_b, 3, H, W)
        for b, v in enumerate(videos):
            if v.shape[0] == 0:
                raise ValueError(f"qwen2_5_vl.encode: sample {b} has no real frame (frame_mask is all False)")
        inputs = self.video_processor(videos=videos, return_tensors="pt", device=str(pixels.device))
        patches = inputs["pixel_values_videos"].to(pixels.device)  # (P, 3·2·14·14)
        grid = inputs["video_grid_thw"].to(pixels.device)  # (B, 3): groups, patch rows, patch columns
        weight = self.encoder.patch_embed.proj.weight
        feats = self.encoder(patches.to(weight.dtype), grid)  # (P, Dv)

        m, tp = self.merge, self.temporal_patch
        p = self.encoder.config.patch_size
        (h, w) = grid[0, 1:].tolist()
        groups = grid[:, 0].tolist()
        T = max(groups)
        tokens = feats.new_zeros(B, T, h * w, feats.shape[-1])
        token_mask = torch.zeros(B, T, h * w, dtype=torch.bool, device=pixels.device)
        group_times = times.new_zeros(B, T)
        group_pixels = patches.new_zeros(B, T, 3, h * p, w * p)
        sizes = [g * h * w for g in groups]
        for b, (f, x, t) in enumerate(zip(feats.split(sizes), patches.split(sizes), groups)):
            # The processor orders patches by (group, block row, block column, row in block, column in block).
            tokens[b, :t] = f.view(t, h // m, w // m, m, m, -1).permute(0, 1, 3, 2, 4, 5).reshape(t, h * w, -1)
            token_mask[b, :t] = True
            x = x.view(t, h // m, w // m, m, m, 3, tp, p, p).mean(6)  # the group's two frames averaged
            group_pixels[b, :t] = x.permute(0, 5, 1, 3, 6, 2, 4, 7).reshape(t, 3, h * p, w * p)
            group_times[b, :t] = times[b][frame_mask[b]][::tp][:t]
        return FrameTokens(tokens, token_mask, group_times, (h, w)), group_pixels

    def project(self, ft: FrameTokens) -> FrameTokens:
        """The merger: each 2×2 block of patches → one LLM token. (B, T', h·w, Dv) → (B, T', h/2·w/2, D)."""
        m = self.merge
        if ft.grid is None or ft.grid[0] % m or ft.grid[1] % m:
            raise ValueError(
                f"qwen2_5_vl.project: the merger needs the patch grid in {m}x{m} blocks, got grid {ft.grid}; "
                "put compressors that drop the grid (or leave an odd side) on 'projected'"
            )
        B, T, N, D = ft.tokens.shape
        h, w = ft.grid
        blocks = ft.tokens.view(B, T, h // m, m, w // m, m, D).permute(0, 1, 2, 4, 3, 5, 6)  # (B, T, h/m, w/m, m, m, D)
        merged = self.projector(blocks.reshape(-1, D)).view(B, T, (h // m) * (w // m), -1)
        # A merged token is real when any patch under it is (pruned patches do not drop whole blocks).
        mask = ft.token_mask.view(B, T, h // m, m, w // m, m).any(5).any(3).reshape(B, T, -1)
        return FrameTokens(merged, mask, ft.times, (h // m, w // m))

    # ------------------------------------------------------------------ the visual span

    def temporal_positions(self, times: Tensor, frame_mask: Tensor) -> Tensor:
        """(B, T') long τ: ⌊(t − t_0) · tokens_per_second⌋, t_0 the sample's first real group."""
        first = frame_mask.float().argmax(1)  # (B,)
        t0 = times.gather(1, first[:, None]).double()
        tau = torch.floor((times.double() - t0) * self.tokens_per_second + TIME_TOLERANCE)
        return tau.clamp(min=0).long()

    def visual_span(self, ft: FrameTokens, closing: bool = True) -> VisualSpan:
        """The kept tokens, group-major and raster within a group, with positions (3, B, L):
        (τ, row, column), counted from 0 at the first token. ``<|vision_start|>`` and
        ``<|vision_end|>`` are prompt text (module docstring), so ``closing`` changes nothing."""
        B, T, N, D = ft.tokens.shape
        h, w = ft.grid if ft.grid is not None else (1, N)
        cell = torch.arange(N, device=ft.tokens.device)
        rows, cols = cell // w, cell % w  # (N,)
        tau = self.temporal_positions(ft.times, ft.frame_mask)  # (B, T)
        seqs, poss = [], []
        for b in range(B):
            t_idx, n_idx = ft.token_mask[b].nonzero(as_tuple=True)  # group-major, raster within a group
            poss.append(torch.stack([tau[b, t_idx], rows[n_idx], cols[n_idx]]))  # (3, n_b)
            seqs.append(ft.tokens[b][ft.token_mask[b]])
        L = max(1, max(s.shape[0] for s in seqs))
        embeds = ft.tokens.new_zeros(B, L, D)
        mask = torch.zeros(B, L, dtype=torch.long, device=ft.tokens.device)
        positions = torch.zeros(3, B, L, dtype=torch.long, device=ft.tokens.device)
        for b, (s, pos) in enumerate(zip(seqs, poss)):
            embeds[b, : s.shape[0]], mask[b, : s.shape[0]], positions[:, b, : s.shape[0]] = s, 1, pos
        return VisualSpan(embeds, mask, positions)
