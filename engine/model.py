"""DiffusionGemma text model: one weight set run as a causal encoder and a bidirectional decoder.

The encoder appends the prompt's keys/values to a KVCache; the decoder refines a canvas whose
queries attend to [cached prompt ; canvas] and never writes the cache. Knows nothing about
tokenization, sampling or checkpoint files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

import kernels

from .config import LayerSpec, ModelConfig


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    # fp32 statistics, as the reference does; torch's fused rms_norm gives the same bits as the
    # reference's pow(-0.5) formulation (tests/test_engine_parity.py) in one op instead of eight
    w = None if weight is None else weight.float()
    return F.rms_norm(x.float(), (x.shape[-1],), w, eps).type_as(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, with_scale: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if with_scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def rope_inv_freq(spec: LayerSpec) -> torch.Tensor:
    """Inverse frequencies (head_dim // 2,): 'default' RoPE, or 'proportional' partial RoPE padded with zeros.

    Always on the CPU (also when the model is built on the meta device); moved with the model."""
    rope, dim = spec.rope, spec.head_dim
    if rope.kind == "proportional":
        angles = int(rope.partial_rotary_factor * dim // 2)
        rotated = 1.0 / (rope.theta ** (torch.arange(0, 2 * angles, 2, dtype=torch.int64, device="cpu").float() / dim))
        inv = torch.cat([rotated, torch.zeros(dim // 2 - angles, device="cpu")])
        return inv / rope.factor
    rot_dim = int(dim * rope.partial_rotary_factor)
    return 1.0 / (rope.theta ** (torch.arange(0, rot_dim, 2, dtype=torch.int64, device="cpu").float() / rot_dim))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, T, heads, D); cos/sin: (B or 1, T, D)
    return x * cos.unsqueeze(2) + rotate_half(x) * sin.unsqueeze(2)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, spec: LayerSpec):
        super().__init__()
        hidden, heads = config.hidden_size, config.num_attention_heads
        self.spec = spec
        self.window = config.sliding_window if spec.sliding else None
        self.q_proj = nn.Linear(hidden, heads * spec.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, spec.num_kv_heads * spec.head_dim, bias=False)
        # full-attention layers have no v_proj: values are the (pre-norm) keys
        self.v_proj = nn.Linear(hidden, spec.num_kv_heads * spec.head_dim, bias=False) if spec.sliding else None
        self.o_proj = nn.Linear(heads * spec.head_dim, hidden, bias=False)
        self.q_norm = RMSNorm(spec.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(spec.head_dim, config.rms_norm_eps)
        self.eps = config.rms_norm_eps

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """x (B, T, hidden) -> q (B, Hq, T, D), k and v (B, Hkv, T, D)."""
        B, T, _ = x.shape
        D = self.spec.head_dim
        q = apply_rope(self.q_norm(self.q_proj(x).view(B, T, -1, D)), cos, sin)
        k_raw = self.k_proj(x).view(B, T, -1, D)
        v = self.v_proj(x).view(B, T, -1, D) if self.v_proj is not None else k_raw
        k = apply_rope(self.k_norm(k_raw), cos, sin)
        v = rms_norm(v, None, self.eps)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


class Layer(nn.Module):
    def __init__(self, config: ModelConfig, spec: LayerSpec):
        super().__init__()
        H, I, eps = config.hidden_size, config.intermediate_size, config.rms_norm_eps
        self.top_k = config.top_k_experts
        self.self_attn = Attention(config, spec)
        self.mlp_gate = nn.Linear(H, I, bias=False)
        self.mlp_up = nn.Linear(H, I, bias=False)
        self.mlp_down = nn.Linear(I, H, bias=False)
        self.router_proj = nn.Linear(H, config.num_experts, bias=False)
        self.router_scale = nn.Parameter(torch.ones(H))
        self.per_expert_scale = nn.Parameter(torch.ones(config.num_experts))
        self.experts_gate_up = nn.Parameter(torch.empty(config.num_experts, 2 * config.moe_intermediate_size, H))
        self.experts_down = nn.Parameter(torch.empty(config.num_experts, H, config.moe_intermediate_size))
        for name in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                     "post_feedforward_layernorm", "post_feedforward_layernorm_1",
                     "pre_feedforward_layernorm_2", "post_feedforward_layernorm_2"):
            setattr(self, name, RMSNorm(H, eps))
        # the encoder and decoder share every weight but keep their own layer scalar
        self.encoder_scalar = nn.Parameter(torch.ones(1))
        self.decoder_scalar = nn.Parameter(torch.ones(1))
        self.eps = eps
        # True: every expert runs on every token (zero weight off its top-k): the same function as
        # two GEMMs with static shapes (training sets it, so torch.compile fuses the layer whole).
        # None: decide per call (see forward). False: always the routed kernel.
        self.dense_experts: bool | None = None

    def route(self, x: torch.Tensor):
        """x (T, H) -> top-k weights (T, K) fp32 and expert ids (T, K)."""
        h = rms_norm(x, None, self.eps) * self.router_scale * (x.shape[-1] ** -0.5)
        probs = F.softmax(self.router_proj(h), dim=-1, dtype=torch.float32)
        weights, index = torch.topk(probs, self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights * self.per_expert_scale[index], index

    def forward(self, x: torch.Tensor, cos, sin, attend, scalar: torch.Tensor) -> torch.Tensor:
        """`attend(q, k, v) -> (B, Hq, T, D)` decides which keys the queries see (cache, canvas, masks)."""
        B, T, H = x.shape
        q, k, v = self.self_attn.project(self.input_layernorm(x), cos, sin)
        a = attend(q, k, v).transpose(1, 2).reshape(B, T, -1)
        x = x + self.post_attention_layernorm(self.self_attn.o_proj(a))

        h = self.pre_feedforward_layernorm(x)
        dense = self.post_feedforward_layernorm_1(
            self.mlp_down(F.gelu(self.mlp_gate(h), approximate="tanh") * self.mlp_up(h))
        )
        flat = x.reshape(-1, H)
        weights, index = self.route(flat)  # routing reads the residual stream, the experts its norm
        experts_in = self.pre_feedforward_layernorm_2(flat)
        all_experts = self.dense_experts
        if all_experts is None:
            # a canvas on few low-precision CPU experts: two GEMMs over all experts beat ~8 small ops
            # per hit expert (8 experts top-2, 64 tokens: 0.4 vs 0.6 ms per layer); longer prompts
            # pay the E/K-fold FLOPs (256 tokens: slower), fp32 keeps the reference's routed ops
            # (parity), and many experts (the 26B's 128) stay routed
            all_experts = (x.device.type == "cpu" and x.dtype != torch.float32 and not torch.is_grad_enabled()
                           and flat.shape[0] <= DENSE_MAX_TOKENS
                           and self.experts_gate_up.shape[0] <= DENSE_MAX_EXPERTS
                           and type(self.experts_gate_up) is nn.Parameter)  # quantized experts stay routed
        if all_experts:
            routed = dense_moe(experts_in, index, weights, self.experts_gate_up, self.experts_down)
        else:
            routed = kernels.moe_experts(experts_in, index, weights, self.experts_gate_up, self.experts_down)
        routed = self.post_feedforward_layernorm_2(routed.reshape(B, T, H))
        x = x + self.post_feedforward_layernorm(dense + routed)
        return x * scalar


DENSE_MAX_EXPERTS, DENSE_MAX_TOKENS = 16, 128  # when inference runs every expert (Layer.forward)


def dense_moe(x, index, weights, gate_up, down):
    """kernels.moe_experts computed for every expert and weighted by the (T, E) scattered top-k weights.

    Two GEMMs: x @ all experts' gate/up rows, then the weighted hiddens of all experts side by side
    @ all experts' down columns, which sums over experts inside the product."""
    T = x.shape[0]
    E, I2, H = gate_up.shape
    inter = I2 // 2
    gate_and_up = F.linear(x, gate_up.reshape(E * I2, H)).view(T, E, I2)
    hidden = F.gelu(gate_and_up[..., :inter], approximate="tanh") * gate_and_up[..., inter:]  # (T, E, I)
    dense_w = torch.zeros(T, E, dtype=weights.dtype, device=x.device).scatter(1, index, weights)
    hidden = hidden * dense_w.to(hidden.dtype)[..., None]
    return F.linear(hidden.reshape(T, E * inter), down.permute(1, 0, 2).reshape(H, E * inter)).to(x.dtype)


class KVCache:
    """Per-layer keys/values of everything encoded so far, (B, Hkv, capacity, D), grown on demand.

    Keeps every position (also for sliding layers) so a prompt can be truncated to a shared
    prefix and re-extended: keystroke-by-keystroke editing reuses it.
    """

    def __init__(self, config: ModelConfig, batch: int, dtype: torch.dtype, device, capacity: int = 512):
        self.config, self.batch, self.dtype, self.device = config, batch, dtype, device
        self.length = 0
        self.keys = [torch.empty(batch, s.num_kv_heads, capacity, s.head_dim, dtype=dtype, device=device)
                     for s in config.layers]
        self.values = [torch.empty_like(k) for k in self.keys]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def copy(self, batch: int = 1, capacity: int | None = None) -> "KVCache":
        """A new cache holding what this one holds (its `length` positions) in each of `batch` rows
        (this cache: one row, or `batch` rows), with room for `capacity` positions (default: just
        those). For work that must not disturb this cache: a batch's snapshot, branches in lockstep."""
        out = KVCache(self.config, batch, self.dtype, self.device, capacity=max(capacity or self.length, 1))
        for store, source in ((out.keys, self.keys), (out.values, self.values)):
            for i, t in enumerate(source):
                store[i][:, :, : self.length] = t[:, :, : self.length]
        out.length = self.length
        return out

    def reserve(self, length: int):
        if length <= self.capacity:
            return
        new_cap = max(length, 2 * self.capacity)
        for store in (self.keys, self.values):
            for i, t in enumerate(store):
                grown = t.new_empty(t.shape[0], t.shape[1], new_cap, t.shape[3])
                grown[:, :, : self.length] = t[:, :, : self.length]
                store[i] = grown

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor):
        end = start + k.shape[2]
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def truncate(self, length: int):
        self.length = min(self.length, length)


@dataclass
class DecoderContext:
    """What canvas queries see of the prompt: per-layer (k, v), already cut to each layer's window."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]


class DiffusionGemma(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Layer(config, spec) for spec in config.layers)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        H, I = config.hidden_size, config.intermediate_size
        self.sc_pre_norm = RMSNorm(H, config.rms_norm_eps)
        self.sc_gate = nn.Linear(H, I, bias=False)
        self.sc_up = nn.Linear(H, I, bias=False)
        self.sc_down = nn.Linear(I, H, bias=False)
        self._inv_freq = {spec: rope_inv_freq(spec) for spec in set(config.layers)}

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def embed_scale(self) -> torch.Tensor:
        # the reference keeps sqrt(hidden) as a fp32 buffer and casts it to the weight dtype
        return torch.tensor(self.config.hidden_size**0.5, dtype=torch.float32).to(self.dtype)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed(ids) * self.embed_scale()

    def rope(self, positions: torch.Tensor, dtype: torch.dtype):
        """positions (B or 1, T) -> {spec: (cos, sin)} each (B or 1, T, D)."""
        out = {}
        for spec, inv in self._inv_freq.items():
            freqs = positions[..., None].float() * inv.to(positions.device)
            emb = torch.cat((freqs, freqs), dim=-1)
            out[spec] = (emb.cos().to(dtype), emb.sin().to(dtype))
        return out

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Tied LM head with final-logit softcapping, fp32 (…, vocab)."""
        logits = F.linear(hidden, self.embed.weight).float()
        cap = self.config.final_logit_softcapping
        if not cap:
            return logits
        if torch.is_grad_enabled():
            return torch.tanh(logits / cap) * cap
        if self.dtype == torch.float32:  # the parity path: the reference's own ops, in place
            return logits.div_(cap).tanh_().mul_(cap)
        # low-precision weights: tanh(x) = 2 sigmoid(2x) - 1 in place, 5x faster than tanh_ on a CPU
        # core, within 1e-5 of it at cap 30 (far below the bf16 rounding of the hidden states)
        return logits.mul_(2 / cap).sigmoid_().mul_(2 * cap).sub_(cap)

    def soft_embedding(self, sc_logits: torch.Tensor) -> torch.Tensor:
        """softmax(previous logits) @ embedding, scaled like token embeddings: (B, C, V) -> (B, C, H)."""
        return kernels.soft_embedding(sc_logits, self.embed.weight, self.embed_scale())

    def self_condition(self, embeds: torch.Tensor, soft: torch.Tensor | None) -> torch.Tensor:
        if soft is None:  # first step: a zero signal, which the block maps to zero
            soft = torch.zeros_like(embeds)
        h = self.sc_pre_norm(soft)
        signal = self.sc_down(F.gelu(self.sc_gate(h), approximate="tanh") * self.sc_up(h))
        return rms_norm(embeds + signal, None, self.config.rms_norm_eps)

    def run(self, x: torch.Tensor, positions: torch.Tensor, attend, *, decoder: bool | torch.Tensor) -> torch.Tensor:
        """The layer stack over embeddings x (B, T, H) at positions (B or 1, T) -> final normed hidden.

        `attend(i, spec, q, k, v)` decides what layer i's queries see: the encoder's KV cache, the
        decoder's [cached prompt ; canvas], or training's packed slots with their masks. `decoder`:
        which layer scalars apply, for every position or per position (a (T,) bool tensor)."""
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else self.dtype
        ropes = self.rope(positions, dtype)
        for i, (layer, spec) in enumerate(zip(self.layers, self.config.layers)):
            if isinstance(decoder, torch.Tensor):
                scalar = torch.where(decoder[:, None], layer.decoder_scalar, layer.encoder_scalar)
            else:
                scalar = layer.decoder_scalar if decoder else layer.encoder_scalar
            x = layer(x, *ropes[spec], partial(attend, i, spec), scalar)
        return self.norm(x)

    # ---- encoder -----------------------------------------------------------------------------

    def encode(self, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Causal pass over new tokens ids (B, T) at positions [cache.length, +T); appends their KV.

        Returns the final normed hidden states (B, T, H)."""
        B, T = ids.shape
        start = cache.length
        cache.reserve(start + T)
        positions = torch.arange(start, start + T, device=ids.device)[None]
        q_pos = positions[0, :, None]
        k_pos = torch.arange(start + T, device=ids.device)[None, :]
        causal = k_pos <= q_pos
        masks = {False: causal, True: causal & (k_pos > q_pos - self.config.sliding_window)}

        def attend(i, spec, q, k, v):
            k_all, v_all = cache.write(i, start, k, v)
            return F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=masks[spec.sliding], scale=1.0,
                                                  enable_gqa=True)

        hidden = self.run(self.embed_tokens(ids), positions, attend, decoder=False)
        cache.length = start + T
        return hidden

    # ---- decoder -----------------------------------------------------------------------------

    def decoder_context(self, cache: KVCache, batch: int) -> DecoderContext:
        """The cached prompt as the canvas sees it; sliding layers see the last window-1 positions."""
        L, W = cache.length, self.config.sliding_window
        keys, values = [], []
        for i, spec in enumerate(self.config.layers):
            start = max(0, L - W + 1) if spec.sliding else 0
            k, v = cache.keys[i][:, :, start:L], cache.values[i][:, :, start:L]
            if k.shape[0] != batch:
                k, v = k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)
            keys.append(k)
            values.append(v)
        return DecoderContext(keys, values)

    def decode(self, canvas: torch.Tensor, context: DecoderContext, start: int,
               sc_logits: torch.Tensor | None = None) -> torch.Tensor:
        """Bidirectional pass over canvas (B, C) at positions [start, start + C) -> hidden (B, C, H).

        Self-conditioning comes from the previous step's logits (`sc_logits`); none on the first step."""
        soft = None if sc_logits is None else self.soft_embedding(sc_logits)
        return self.decode_soft(canvas, context.keys, context.values, start, soft)

    def decode_soft(self, canvas: torch.Tensor, ctx_keys: list[torch.Tensor], ctx_values: list[torch.Tensor],
                    start: int, soft: torch.Tensor | None) -> torch.Tensor:
        """`decode` given the self-conditioning input itself (B, C, H), None or zeros on the first step."""
        C = canvas.shape[1]
        positions = torch.arange(start, start + C, device=canvas.device)[None]
        x = self.self_condition(self.embed_tokens(canvas), soft)

        def attend(i, spec, q, k, v):
            ctx_k, ctx_v = ctx_keys[i], ctx_values[i]
            keys, values = torch.cat([ctx_k, k], 2), torch.cat([ctx_v, v], 2)
            if kernels.backend_for(q, keys) == "triton":
                return kernels.decoder_attention(q, keys, values, canvas_start=ctx_k.shape[2], window=None)
            # on the CPU, SDPA computes the same as kernels.reference.decoder_attention, faster
            return F.scaled_dot_product_attention(q, keys, values, scale=1.0, enable_gqa=True)

        return self.run(x, positions, attend, decoder=True)

    def decoder_logits(self, canvas: torch.Tensor, context: DecoderContext, start: int,
                       soft: torch.Tensor | None = None) -> torch.Tensor:
        """One denoising step's logits (B, C, V) fp32, softcapped, given its self-conditioning input
        soft (B, C, H) (None on a canvas's first step): decode_soft then logits."""
        return self.logits(self.decode_soft(canvas, context.keys, context.values, start, soft))

    def encode_then_decode(self, ids: torch.Tensor, canvas: torch.Tensor | list[torch.Tensor],
                           cache: KVCache) -> torch.Tensor | list[torch.Tensor]:
        """`encode(ids)` then `decode(canvas)` after it (first step: no self-conditioning) in one pass
        over the weights: the new tokens (B, T) and the canvas (B, C) side by side in one sequence,
        each position with its own layer scalars, one attention mask keeping them apart (the new
        tokens see the cache causally, never the canvas; the canvas sees the cache with the new
        tokens as `decoder_context` would, and itself). Appends the tokens' KV like `encode`; returns
        the canvas's final normed hidden (B, C, H). Several canvases (a list), all at the same
        positions right after the new tokens, each see only themselves and the cache: one hidden
        each, as separate `decode` calls would give. Committing decoding runs one of these a token
        (engine.api.commit_tokens) instead of an encode and a decode: the weights are read once."""
        canvases = [canvas] if isinstance(canvas, torch.Tensor) else list(canvas)
        T = ids.shape[1]
        widths = [c.shape[1] for c in canvases]
        start, W = cache.length, self.config.sliding_window
        cache.reserve(start + T)
        end = start + T  # the cache's length once the tokens are in; every canvas sits at [end, end + C)
        dev = ids.device
        positions = torch.cat([torch.arange(start, end, device=dev)]
                              + [torch.arange(end, end + w, device=dev) for w in widths])[None]
        n = T + sum(widths)
        group = torch.cat([torch.zeros(T, dtype=torch.long, device=dev)]
                          + [torch.full((w,), g + 1, device=dev) for g, w in enumerate(widths)])  # 0: new tokens
        key_group = torch.cat([torch.zeros(end, dtype=torch.long, device=dev), group[T:]])
        q_pos = positions[0, :, None]
        k_pos = torch.cat([torch.arange(end, device=dev), positions[0, T:]])[None, :]
        is_canvas = group > 0
        from_cache = torch.arange(end + n - T, device=dev)[None, :] < end
        encoder = ~is_canvas[:, None] & from_cache & (k_pos <= q_pos)
        own_canvas = is_canvas[:, None] & (key_group[None, :] == group[:, None])
        masks = {}
        for sliding in (False, True):
            window = (k_pos > q_pos - W) if sliding else torch.ones_like(encoder)
            seen = (k_pos >= end - W + 1) if sliding else torch.ones_like(encoder)  # decoder_context's window
            masks[sliding] = (encoder & window) | (is_canvas[:, None] & from_cache & seen) | own_canvas
        x = torch.cat([self.embed_tokens(ids)] + [self.self_condition(self.embed_tokens(c), None) for c in canvases],
                      1)

        def attend(i, spec, q, k, v):
            k_all, v_all = cache.write(i, start, k[:, :, :T], v[:, :, :T])
            keys, values = torch.cat([k_all, k[:, :, T:]], 2), torch.cat([v_all, v[:, :, T:]], 2)
            return F.scaled_dot_product_attention(q, keys, values, attn_mask=masks[spec.sliding], scale=1.0,
                                                  enable_gqa=True)

        hidden = self.run(x, positions, attend, decoder=is_canvas)
        cache.length = end
        out = list(hidden[:, T:].split(widths, dim=1))
        return out[0] if isinstance(canvas, torch.Tensor) else out

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def init_weights(model: DiffusionGemma, std: float = 0.02, seed: int = 0):
    """Random init for tiny test checkpoints and training from scratch."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("_scalar") or "norm" in name or name.endswith("scale"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * std)
        for layer in model.layers:
            layer.mlp_down.weight.mul_(1 / math.sqrt(2 * len(model.layers)))
            layer.experts_down.mul_(1 / math.sqrt(2 * len(model.layers)))
            layer.self_attn.o_proj.weight.mul_(1 / math.sqrt(2 * len(model.layers)))
