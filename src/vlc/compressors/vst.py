"""`compressor=vst`: Video-XL visual summarization tokens, i.e. Activation Beacon KV compression
inside the LLM.

Nothing happens before the LLM (``forward`` is the identity). At prefill the visual span is cut
into windows of ``window`` raw tokens; after every ``ratio`` raw tokens a beacon token is inserted
(interleave). A window attends, plainly causally, to [sink (prefix) KV, all earlier beacons' KV,
itself]; afterwards its raw KV is dropped and only its beacons' KV is kept. Beacon tokens use their
own per-layer q/k/v projections (copies of the base ones at init); o_proj and the MLP are shared.

Keys are kept *before* RoPE and rotated with fresh contiguous positions at every window, so the
largest position stays about sink + beacons + one window however long the video is.

The decoder layers are driven by an explicit loop over the model's own modules (input_layernorm,
self_attn.{q,k,v,o}_proj, optional q_norm/k_norm, the model's rotary embedding,
post_attention_layernorm, mlp), so any Llama-family Hugging Face model works unmodified.

Beacons never carry labels: they exist only inside prefill, and the answer loss is computed on the
text that continues from the returned ``Context`` (the Video-XL "-100 on beacons" is implicit).
See docs/vst.md for the choices made where the paper is open.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache, PreTrainedModel

from vlc.compressors.base import CacheCompressor, check_settings, is_int, show
from vlc.tokens import Context

try:  # optional: only used on CUDA with fp16/bf16
    from flash_attn import flash_attn_func
except ImportError:  # pragma: no cover - depends on the environment
    flash_attn_func = None

ATTENTION = ("auto", "sdpa", "flash")


@dataclass
class _Stream:
    """Compression state of samples that advance in lockstep (all of a batch, or one sample)."""

    rows: list[int]  # batch rows carried by this stream
    memory: list[tuple[Tensor, Tensor]] = field(default_factory=list)  # per layer (b, Hkv, m, Dh), keys before RoPE
    pending: list[Tensor] = field(default_factory=list)  # raw visual embeds (b, n_i, D) not yet in a window
    visual_tokens: int = 0
    # M-RoPE only: (3, b, n_i) positions of the pending tokens, (3, b, m) of the memory's entries (each
    # keeps the position it was run with; None: the memory sits at 0 … m-1), and (b,) the largest
    # position run so far, dropped raw tokens included (the text continues one past it).
    pending_pos: list[Tensor] = field(default_factory=list)
    positions: Tensor | None = None
    seen: Tensor | None = None

    @property
    def buffered(self) -> int:
        return sum(p.shape[1] for p in self.pending)

    @property
    def length(self) -> int:  # cache entries held so far (sink + beacons, or raw too when not compressing)
        keys = self.memory[0][0] if self.memory else None
        return 0 if keys is None else keys.shape[2]

    def take(self, n: int) -> tuple[Tensor, Tensor | None]:  # (b, n, D), (3, b, n) or None: the first n buffered
        buf = torch.cat(self.pending, 1) if len(self.pending) > 1 else self.pending[0]
        self.pending = [buf[:, n:]] if buf.shape[1] > n else []
        if not self.pending_pos:
            return buf[:, :n], None
        pos = torch.cat(self.pending_pos, 2)
        self.pending_pos = [pos[:, :, n:]] if pos.shape[2] > n else []
        return buf[:, :n], pos[:, :, :n]

    def split(self) -> list[_Stream]:
        """One stream per row, for when the samples' visual masks stop agreeing."""
        return [
            _Stream(
                rows=[row],
                memory=[(k[j : j + 1], v[j : j + 1]) for k, v in self.memory],
                pending=[p[j : j + 1] for p in self.pending],
                visual_tokens=self.visual_tokens,
                pending_pos=[p[:, j : j + 1] for p in self.pending_pos],
                positions=None if self.positions is None else self.positions[:, j : j + 1],
                seen=None if self.seen is None else self.seen[j : j + 1],
            )
            for j, row in enumerate(self.rows)
        ]


class VisualSummarizationTokens(CacheCompressor):
    """Video-XL visual summarization tokens (KV beacons inside the LLM).

    window:    raw visual tokens per window (Video-XL: 1440 = 10 frames x 144 tokens).
    ratio:     raw tokens per beacon at inference.
    ratios:    ratios drawn uniformly per window while training (torch's RNG, so seeding reproduces).
    streaming: the caller may pass ``visual`` as a lazy generator of small chunks (e.g. one group of
               frames each); only sink KV, beacon KV and the current window's raw tokens are kept.
    compress:  False inserts no beacons and keeps all raw KV (windowed prefill == one full forward).
    attention: "auto" (flash-attn when importable, on CUDA, in fp16/bf16; else SDPA), "sdpa" or "flash".
    curriculum: Video-XL's curriculum, easy (small ratios) to hard: a list of ratio sets, e.g.
               [[2], [2, 4], [2, 4, 8]]; stage i is drawn from during compressed training steps
               [i, i + 1) x curriculum_steps / len(curriculum), then ``ratios``. None: ``ratios`` throughout.
    curriculum_steps: how many compressed training steps the curriculum spans.

    With ``model.uncompressed_steps=N`` (handled by VideoLLM, for any compressor) the first N
    training steps run the plain model; ``on_compression_start`` then re-copies the beacon
    parameters from the LLM as trained so far (docs/vst.md).
    """

    def __init__(
        self,
        window: int = 1440,
        ratio: int = 16,
        ratios: Sequence[int] = (2, 4, 8, 12, 16),
        streaming: bool = True,
        compress: bool = True,
        attention: str = "auto",
        curriculum: Sequence[Sequence[int]] | None = None,
        curriculum_steps: int = 0,
    ):
        super().__init__()
        check_settings(_problems(window, ratio, ratios, attention, curriculum, curriculum_steps))
        ratios = tuple(int(r) for r in ratios)
        stages = tuple(tuple(int(r) for r in stage) for stage in (curriculum or ()))
        self.window = int(window)
        self.ratio = int(ratio)
        self.ratios = ratios
        self.curriculum, self.curriculum_steps = stages, int(curriculum_steps)
        self.compressed_steps = 0  # compressed training steps so far (on_train_step sets it)
        self.streaming = bool(streaming)
        self.compress = bool(compress)
        self.attention = attention
        # Filled by bind(): per-layer beacon projections and the beacon embedding row.
        self.beacon_q = nn.ModuleList()
        self.beacon_k = nn.ModuleList()
        self.beacon_v = nn.ModuleList()
        self.register_parameter("beacon_embed", None)
        # Bookkeeping of the last prefill, for tests and efficiency reports.
        self.last_max_position = -1
        # (raw tokens, ratio or 0, beacons) per visual window run; a lockstep batch's window counts once
        self.last_windows: list[tuple[int, int, int]] = []

    def extra_repr(self) -> str:
        curriculum = (f"curriculum={[list(c) for c in self.curriculum]} over {self.curriculum_steps} steps, "
                      if self.curriculum else "")
        return (
            f"window={self.window}, ratio={self.ratio}, ratios={list(self.ratios)}, {curriculum}"
            f"streaming={self.streaming}, compress={self.compress}"
        )

    def chunk_frames(self, tokens_per_frame: int) -> int:
        return max(1, self.window // tokens_per_frame)  # one window of frames per chunk

    def on_train_step(self, compressed_steps: int) -> None:
        self.compressed_steps = compressed_steps  # the ratio curriculum counts these

    # ------------------------------------------------------------------ parameters

    def bind(self, llm: PreTrainedModel, tokenizer) -> None:
        """Create the beacon parameters from ``llm``: per layer a copy of q/k/v_proj, and one beacon
        embedding row copied from the eos embedding. They live in this module (not in the HF model),
        so the optimizer and the checkpoint see them with the compressor. Calling it again
        re-initialises them; load a checkpoint after binding."""
        layers, _ = _decoder_parts(llm)
        self.beacon_q = nn.ModuleList(_copy_linear(layer.self_attn.q_proj) for layer in layers)
        self.beacon_k = nn.ModuleList(_copy_linear(layer.self_attn.k_proj) for layer in layers)
        self.beacon_v = nn.ModuleList(_copy_linear(layer.self_attn.v_proj) for layer in layers)
        weight = llm.get_input_embeddings().weight  # (V, D)
        self.beacon_embed = nn.Parameter(weight[_eos_id(llm, tokenizer)].detach().clone())  # (D,)

    @torch.no_grad()
    def on_compression_start(self, llm: PreTrainedModel, tokenizer) -> None:
        """Overwrite the beacon q/k/v and embedding, in place (optimizer references stay valid),
        with the LLM's current base projections and eos embedding: called once, when an
        uncompressed phase of training ends, so the beacons start from the trained model."""
        layers, _ = _decoder_parts(llm)
        for i, layer in enumerate(layers):
            for beacon, base in ((self.beacon_q[i], layer.self_attn.q_proj), (self.beacon_k[i], layer.self_attn.k_proj),
                                 (self.beacon_v[i], layer.self_attn.v_proj)):
                base = getattr(base, "base_layer", base)
                beacon.weight.copy_(base.weight)
                if base.bias is not None:
                    beacon.bias.copy_(base.bias)
        self.beacon_embed.copy_(llm.get_input_embeddings().weight[_eos_id(llm, tokenizer)])

    # ------------------------------------------------------------------ prefill

    def prefill(
        self,
        llm: PreTrainedModel,
        sink: Tensor,
        sink_mask: Tensor,
        visual: Iterable[tuple[Tensor, Tensor]],
    ) -> Context:
        """Compress ``sink + visual`` into a Context.

        sink (B, S, D) embedded prefix, sink_mask (B, S); visual: (embeds (B, n, D), mask (B, n))
        chunks in order, consumed lazily. The returned cache holds, per sample, sink KV then all
        beacon KV, keys rotated for positions 0..len-1, left-padded where samples differ in length.

        On an M-RoPE LLM (Qwen2-VL family) a chunk may be (embeds, mask, positions (3, B, n)): the
        span's 3-D positions, shifted past the prefix. Raw tokens then keep these positions, a beacon
        takes the position of the raw token it follows, and the memory keeps its entries' positions
        (docs/mrope.md); the text continues one past the largest position, as it would uncompressed.
        """
        layers, rotary = _decoder_parts(llm)
        if self.beacon_embed is None or len(self.beacon_q) != len(layers):
            raise RuntimeError(
                f"vst.prefill: call bind(llm, tokenizer) first "
                f"({len(self.beacon_q)} beacon layers, the model has {len(layers)})"
            )
        B = sink.shape[0]
        sink_mask = sink_mask.bool()
        self.last_max_position, self.last_windows = -1, []
        run = _Runner(self, layers, rotary)

        # All rows in lockstep while every mask is all-true; otherwise one stream per sample.
        if sink_mask.all():
            streams = [_Stream(rows=list(range(B)))]
            if sink.shape[1]:
                run.window(streams[0], sink, ratio=None, visual=False)
        else:
            streams = [_Stream(rows=[b]) for b in range(B)]
            for s in streams:
                if sink_mask[s.rows[0]].any():
                    run.window(s, sink[s.rows[0], sink_mask[s.rows[0]]][None], ratio=None, visual=False)

        for embeds, mask, *pos in visual:  # embeds (B, n, D), mask (B, n)[, positions (3, B, n)]
            mask = mask.bool()
            pos = run.check_positions(pos[0] if pos else None)
            if len(streams) == 1 and B > 1 and not mask.all():
                streams = streams[0].split()
            for s in streams:
                if len(s.rows) > 1:
                    chunk, chunk_pos = embeds, pos  # lockstep: every mask so far is all-true
                else:
                    row = s.rows[0]
                    keep = slice(None) if mask[row].all() else mask[row]
                    chunk = embeds[row, keep][None]
                    chunk_pos = None if pos is None else pos[:, row, keep][:, None]
                if chunk.shape[1] == 0:
                    continue
                s.pending.append(chunk)
                if chunk_pos is not None:
                    s.pending_pos.append(chunk_pos)
                s.visual_tokens += chunk.shape[1]
                self._run_full_windows(run, s)

        for s in streams:
            if s.buffered:  # the last window holds what remains and is still compressed
                x, pos = s.take(s.buffered)
                run.window(s, x, ratio=self._draw_ratio() if self.compress else None, pos=pos)
        return self._context(streams, B, rotary, sink.device)

    def _run_full_windows(self, run: _Runner, s: _Stream) -> None:
        while s.buffered >= self.window:
            if not self.compress:
                x, pos = s.take(self.window)
                run.window(s, x, ratio=None, pos=pos)
                continue
            r = self._draw_ratio()
            # A window compresses a whole number of beacon groups; the n % r raw tokens left over
            # open the next window (so no raw token is lost and every beacon sees r raw tokens).
            x, pos = s.take(self.window // r * r)
            run.window(s, x, ratio=r, pos=pos)

    def training_ratios(self, step: int | None = None) -> tuple[int, ...]:
        """The ratios drawn from at compressed training step ``step`` (default: the current one)."""
        step = self.compressed_steps if step is None else step
        if self.curriculum and step < self.curriculum_steps:
            return self.curriculum[step * len(self.curriculum) // self.curriculum_steps]
        return self.ratios

    def _draw_ratio(self) -> int:
        if not self.training:
            return self.ratio
        ratios = self.training_ratios()
        return ratios[int(torch.randint(len(ratios), ()).item())]

    def _context(self, streams: list[_Stream], B: int, rotary: nn.Module, device: torch.device) -> Context:
        rows = sorted(((row, s, j) for s in streams for j, row in enumerate(s.rows)), key=lambda t: t[0])
        for row, s, _ in rows:
            if s.length == 0:
                raise ValueError(f"vst.prefill: sample {row} has neither prefix nor visual tokens")
        length = torch.tensor([s.length for _, s, _ in rows], device=device)  # (B,)
        # Text continues at len with memory at 0..len-1; on M-RoPE one past the largest position run,
        # where it would continue uncompressed.
        next_position = torch.tensor(
            [s.length if s.positions is None else int(s.seen[j]) + 1 for _, s, j in rows], device=device
        )
        L = int(length.max())
        cache = DynamicCache()
        for i in range(len(self.beacon_q)):
            rotated = {}
            for s in streams:
                k, v = s.memory[i]  # (b, Hkv, m, Dh), keys not yet rotated
                pos = torch.arange(s.length, device=device)[None] if s.positions is None else s.positions
                cos, sin = rotary(v, pos)  # (1 or b, m, Dh)
                rotated[id(s)] = (_rope(k, cos, sin), v)
            if len(streams) == 1:
                keys, values = rotated[id(streams[0])]
            else:  # left padding, so every sample's last entry sits at the same column
                keys = torch.cat([F.pad(rotated[id(s)][0][j : j + 1], (0, 0, L - s.length, 0)) for _, s, j in rows])
                values = torch.cat([F.pad(rotated[id(s)][1][j : j + 1], (0, 0, L - s.length, 0)) for _, s, j in rows])
            cache.update(keys, values, i)  # (B, Hkv, L, Dh)
        attention_mask = (torch.arange(L, device=device)[None] >= (L - length)[:, None]).long()  # (B, L)
        visual_tokens = torch.tensor([s.visual_tokens for _, s, _ in rows], device=device)
        return Context(cache, attention_mask, next_position, visual_tokens)


def _problems(window, ratio, ratios, attention, curriculum, curriculum_steps) -> list[str]:
    if not is_int(window, 1):
        return [f"compressor.window={show(window)} (vst): raw visual tokens per window, an integer >= 1 "
                f"(Video-XL: 1440 = 10 frames x 144 tokens)"]
    out = []
    if not is_int(ratio, 1, window):
        out.append(f"compressor.ratio={show(ratio)} (vst): raw tokens per beacon at inference, an integer in "
                   f"1..window (window={window}); Video-XL uses 16, and a ratio above the window would leave a "
                   f"window without a beacon")
    ratios = list(ratios or [])
    if not ratios:
        out.append("compressor.ratios=[] (vst): give at least one training ratio, each in 1..window, "
                   "e.g. [2, 4, 8, 12, 16]")
    bad = [r for r in ratios if not is_int(r, 1, window)]
    if bad:
        out.append(f"compressor.ratios={ratios} (vst): {bad} outside 1..window (window={window}); "
                   f"lower them or raise window")
    if attention not in ATTENTION:
        out.append(f"compressor.attention={show(attention)} (vst): choose one of {', '.join(ATTENTION)}")
    stages = [list(stage) for stage in (curriculum or ())]
    if stages and (not is_int(curriculum_steps, len(stages)) or any(not stage for stage in stages)):
        out.append(f"compressor.curriculum (vst): {len(stages)} stages need curriculum_steps >= {len(stages)} "
                   f"(got {curriculum_steps}) and at least one ratio each")
    bad = [r for stage in stages for r in stage if not is_int(r, 1, window)]
    if bad:
        out.append(f"compressor.curriculum (vst): {bad} outside 1..window (window={window})")
    return out


class _Runner:
    """Runs one window through the decoder layers and updates a stream's KV memory."""

    def __init__(self, vst: VisualSummarizationTokens, layers: nn.ModuleList, rotary: nn.Module):
        self.vst, self.layers, self.rotary = vst, layers, rotary

    def check_positions(self, pos: Tensor | None) -> Tensor | None:
        if pos is not None and getattr(self.rotary, "mrope_section", None) is None:
            raise TypeError(
                f"vst.prefill: the visual chunks carry 3-D positions but {type(self.rotary).__name__} is a 1-D "
                "rotary embedding; pass (embeds, mask) chunks for this LLM"
            )
        return pos

    def window(self, s: _Stream, x: Tensor, ratio: int | None, visual: bool = True, pos: Tensor | None = None) -> None:
        """x (b, n, D) raw embeds; ratio None: no beacons, keep all KV (the sink, or compress=False);
        pos (3, b, n) the raw tokens' M-RoPE positions, None on a 1-D RoPE LLM."""
        vst = self.vst
        b, n, _ = x.shape
        if ratio is None:
            plan, h, nb = None, x, 0
        else:
            plan = _interleave(n, ratio, x.device)
            nb = plan.beacon_slots.numel()
            beacons = vst.beacon_embed.to(x.dtype).expand(b, nb, -1)  # (b, nb, D)
            h = torch.cat([x, beacons], 1)[:, plan.order]  # (b, n + nb, D) raw and beacons interleaved
        m, L = s.length, h.shape[1]
        position_ids = self.positions(s, pos, plan, ratio, L, x.device)  # (1, m + L) or (3, b, m + L)
        cos, sin = self.rotary(h, position_ids)  # (1 or b, m + L, Dh)
        vst.last_max_position = max(vst.last_max_position, int(position_ids.max()))
        if position_ids.dim() == 3:  # M-RoPE: the memory keeps the positions of the entries it keeps
            window = position_ids[:, :, m:] if plan is None else position_ids[:, :, m:][:, :, plan.beacon_slots]
            s.positions = torch.cat([position_ids[:, :, :m], window], 2)  # (3, b, m + kept)
            top = position_ids.amax(dim=(0, 2))  # (b,)
            s.seen = top if s.seen is None else torch.maximum(s.seen, top)
        if visual:
            vst.last_windows.append((n, ratio or 0, nb))
        if not s.memory:
            s.memory = [(None, None)] * len(self.layers)
        for i in range(len(self.layers)):
            args = (i, h, s.memory[i][0], s.memory[i][1], cos, sin, plan)
            # Honour the LLM's activation checkpointing: HF marks each checkpointed layer with this flag.
            checkpointed = getattr(self.layers[i], "gradient_checkpointing", False) is True
            if checkpointed and vst.training and torch.is_grad_enabled():
                h, k, v = checkpoint(self.layer, *args, use_reentrant=False)
            else:
                h, k, v = self.layer(*args)
            s.memory[i] = (k, v)

    @staticmethod
    def positions(s: _Stream, pos: Tensor | None, plan, ratio: int | None, L: int, device) -> Tensor:
        """Positions of [memory | window]. 1-D: fresh contiguous positions, memory 0..m-1 and the window
        m..m+L-1. M-RoPE (pos (3, b, n) given): the memory's own positions; raw tokens keep theirs and
        each beacon takes that of the raw token it follows, so nothing moves (docs/mrope.md)."""
        m = s.length
        memory = torch.arange(m, device=device)[None] if s.positions is None else s.positions
        if pos is None:  # the sink, or a 1-D LLM
            start = m if s.positions is None else int(s.positions.max()) + 1
            window = start + torch.arange(L, device=device)[None]
            if s.positions is None:
                return torch.cat([memory, window], 1)  # (1, m + L)
            window = window.expand(3, memory.shape[1], L)
        elif plan is None:
            window = pos  # (3, b, L)
        else:
            n = pos.shape[2]
            last = torch.clamp((torch.arange(plan.beacon_slots.numel(), device=device) + 1) * ratio, max=n) - 1
            window = torch.cat([pos, pos[:, :, last]], 2)[:, :, plan.order]  # (3, b, n + nb) in slot order
        if memory.dim() == 2:
            memory = memory.expand(3, window.shape[1], m)
        return torch.cat([memory, window], 2)  # (3, b, m + L)

    def layer(self, i: int, h: Tensor, mem_k: Tensor | None, mem_v: Tensor | None, cos: Tensor, sin: Tensor, plan):
        """One decoder layer over a window. h (b, L, D); mem_* (b, Hkv, m, Dh) keys before RoPE, or None.
        Returns the layer's output (b, L, D) and the new memory (raw KV dropped when ``plan`` has beacons)."""
        vst, layer = self.vst, self.layers[i]
        attn = layer.self_attn
        b, L, _ = h.shape
        head_dim = attn.head_dim
        x = layer.input_layernorm(h)
        k = _project(x, attn.k_proj, vst.beacon_k[i], plan).view(b, L, -1, head_dim)
        v = _project(x, attn.v_proj, vst.beacon_v[i], plan).view(b, L, -1, head_dim).transpose(1, 2)
        if getattr(attn, "k_norm", None) is not None:
            k = attn.k_norm(k)
        k = k.transpose(1, 2)  # (b, Hkv, L, Dh)
        keep_k, keep_v = (k, v) if plan is None else (k[:, :, plan.beacon_slots], v[:, :, plan.beacon_slots])
        if mem_k is not None:
            keys, values = torch.cat([mem_k, k], 2), torch.cat([mem_v, v], 2)  # (b, Hkv, m + L, Dh)
            keep_k, keep_v = torch.cat([mem_k, keep_k], 2), torch.cat([mem_v, keep_v], 2)
        else:
            keys, values = k, v
        if i == len(self.layers) - 1:
            return h, keep_k, keep_v  # the last layer's output is never read: only its KV is cached

        q = _project(x, attn.q_proj, vst.beacon_q[i], plan).view(b, L, -1, head_dim)
        if getattr(attn, "q_norm", None) is not None:
            q = attn.q_norm(q)
        q = _rope(q.transpose(1, 2), cos[:, -L:], sin[:, -L:])  # (b, H, L, Dh)
        keys = _rope(keys, cos, sin)
        scale = getattr(attn, "scaling", head_dim**-0.5)
        dropout = getattr(attn, "attention_dropout", 0.0) if vst.training else 0.0
        o = _attend(q, keys, values, scale, dropout, vst.attention)  # (b, L, H * Dh)
        h = h + attn.o_proj(o)
        h = h + layer.mlp(layer.post_attention_layernorm(h))
        return h, keep_k, keep_v


@dataclass
class _Plan:
    order: Tensor  # (n + nb,) index into cat([raw, beacons]) for each slot of the window
    raw_slots: Tensor  # (n,) slots of the raw tokens
    beacon_slots: Tensor  # (nb,) slots of the beacons


def _interleave(n: int, r: int, device: torch.device) -> _Plan:
    """Slots of n raw tokens with a beacon after every r of them (ceil(n / r) beacons: a trailing
    partial group still gets its beacon, after its last raw token)."""
    nb = -(-n // r)
    t = torch.arange(n, device=device)
    j = torch.arange(nb, device=device)
    raw_slots = t + t // r  # raw token t has t // r beacons before it
    beacon_slots = torch.clamp((j + 1) * r, max=n) + j  # beacon j follows raw token min((j+1)r, n) - 1
    order = torch.empty(n + nb, dtype=torch.long, device=device)
    order[torch.cat([raw_slots, beacon_slots])] = torch.arange(n + nb, device=device)
    return _Plan(order, raw_slots, beacon_slots)


def _project(x: Tensor, base: nn.Module, beacon: nn.Module, plan: _Plan | None) -> Tensor:
    """Raw slots through the model's projection, beacon slots through the beacon copy. x (b, L, D)."""
    if plan is None:
        return base(x)
    out = torch.cat([base(x[:, plan.raw_slots]), beacon(x[:, plan.beacon_slots])], 1)
    return out[:, plan.order]


def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Llama-style rotary embedding (rotate_half). x (b, H, L, Dh); cos/sin (1, L, Dh)."""
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)
    x1, x2 = x.chunk(2, -1)
    return x * cos + torch.cat([-x2, x1], -1) * sin


def _attend(q: Tensor, k: Tensor, v: Tensor, scale: float, dropout: float, attention: str) -> Tensor:
    """Causal attention with q_len <= k_len, bottom-right aligned (query i sees keys up to
    i + k_len - q_len). q (b, H, Lq, Dh); k/v (b, Hkv, Lk, Dh) with H a multiple of Hkv (GQA).
    Returns (b, Lq, H * Dh)."""
    b, H, Lq, Dh = q.shape
    Lk = k.shape[2]
    use_flash = attention == "flash" or (
        attention == "auto" and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
    )
    if use_flash and flash_attn_func is not None:
        # flash-attn's causal=True is bottom-right aligned and handles GQA itself.
        o = flash_attn_func(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout, softmax_scale=scale, causal=True
        )  # (b, Lq, H, Dh)
        return o.reshape(b, Lq, H * Dh)
    if attention == "flash":
        raise RuntimeError("vst: attention='flash' but flash_attn is not installed; use 'auto' or 'sdpa'")
    # SDPA's is_causal=True is top-left aligned, wrong when Lq < Lk: pass the mask explicitly.
    mask = torch.arange(Lk, device=q.device)[None] <= torch.arange(Lq, device=q.device)[:, None] + (Lk - Lq)
    o = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale, enable_gqa=k.shape[1] != H
    )  # (b, H, Lq, Dh)
    return o.transpose(1, 2).reshape(b, Lq, H * Dh)


def _decoder_parts(llm: PreTrainedModel) -> tuple[nn.ModuleList, nn.Module]:
    """The decoder layers and the rotary embedding of a Llama-family causal LM."""
    decoder = llm.get_decoder() if hasattr(llm, "get_decoder") else llm
    layers = getattr(decoder, "layers", None)
    rotary = getattr(decoder, "rotary_emb", None)
    if layers is None or rotary is None:
        raise TypeError(
            f"vst: {type(llm).__name__} has no decoder.layers / decoder.rotary_emb; vst needs a Llama-family model"
        )
    for name in ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp"):
        if not hasattr(layers[0], name):
            raise TypeError(
                f"vst: decoder layer {type(layers[0]).__name__} has no {name}; vst needs a Llama-family model"
            )
    return layers, rotary


def _eos_id(llm: PreTrainedModel, tokenizer) -> int:
    """The eos token id the beacon embedding is copied from: the tokenizer's, else the config's."""
    eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
    if eos is None:
        eos = llm.config.eos_token_id
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    if eos is None:
        raise ValueError("vst.bind: neither the tokenizer nor llm.config has an eos_token_id for the beacons")
    return int(eos)


def _copy_linear(proj: nn.Module) -> nn.Linear:
    """A fresh nn.Linear with the weights of ``proj`` (its base layer when wrapped, e.g. by LoRA)."""
    proj = getattr(proj, "base_layer", proj)
    w = proj.weight
    copy = nn.Linear(w.shape[1], w.shape[0], bias=proj.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        copy.weight.copy_(w)
        if proj.bias is not None:
            copy.bias.copy_(proj.bias)
    return copy
