"""The DSIE encoder.

Item token = sum of the item's SID level embeddings (c1..cL and the dedup level), plus an
optional item-id embedding. Two causal self-attention encoders read a user's left-padded history
in parallel:

- long-term branch: the last `long_len` items with forward position embeddings, and the
  user's group token (the projected persona embedding) in front of them; attention through
  `coea_kernels.attention` (causal, left padding). A group-consistency loss pulls its state toward
  the centroid projected from its group's persona and away from the other groups' centroids
  (a softmax over the groups' cosine similarities), so groups separate.
- short-term branch: causal self-attention restricted to the last `short_len` positions
  (a sliding window; with one layer its state at t depends on items t-short_len+1..t only), with
  learned relative-position key/value embeddings.

A sigmoid gate computed from both states mixes them; items are scored by the dot product of the
fused state with the item tokens. Auxiliary heads predict the next item's code at each SID
level from the fused state (dot product with that level's code embeddings).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from coea_cli.options import Branches, DsieOptions
from coea_cli.workspace import SidLayout

BRANCHES = tuple(str(b) for b in Branches)
GROUP_TEMPERATURE = 0.1  # of the group-consistency softmax over centroids


@dataclass
class DSIEConfig:
    """The model's shape. Options-backed fields come from `from_options` (their defaults are
    defined once, in `DsieOptions`)."""

    n_items: int
    code_sizes: list[int]  # codebook size of each SID column (levels, then dedup)
    levels: int  # SID levels with an auxiliary next-code loss (the dedup column excluded)
    n_groups: int
    persona_dim: int
    hidden: int
    heads: int
    long_layers: int
    short_layers: int
    long_len: int
    short_len: int
    dropout: float
    item_embedding: bool
    branches: str
    use_group: bool
    backend: str  # coea_kernels.attention backend
    mlp_ratio: int = 2  # MLP hidden size = mlp_ratio x hidden
    gate_init: float = (
        0.0  # initial gate bias: sigmoid(gate_init) = initial weight of the long state
    )
    extra: dict = field(default_factory=dict)

    @property
    def has_long(self) -> bool:
        return self.branches in ("both", "long")

    @property
    def has_short(self) -> bool:
        return self.branches in ("both", "short")

    @property
    def group_on(self) -> bool:
        return self.use_group and self.has_long and self.n_groups > 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_options(
        cls, o: DsieOptions, n_items: int, layout: SidLayout, persona_shape: tuple[int, int]
    ) -> DSIEConfig:
        return cls(
            n_items=n_items,
            code_sizes=list(layout.sizes),
            levels=layout.levels,
            n_groups=int(persona_shape[0]),
            persona_dim=int(persona_shape[1]),
            hidden=o.hidden,
            heads=o.heads,
            long_layers=o.long_layers,
            short_layers=o.short_layers,
            long_len=o.long_len,
            short_len=o.short_len,
            dropout=o.dropout,
            item_embedding=o.item_embedding,
            branches=str(o.branches),
            use_group=o.group,
            backend=str(o.backend),
        )

    @classmethod
    def from_dict(cls, d: dict) -> DSIEConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class MLP(nn.Sequential):
    def __init__(self, hidden: int, dropout: float, ratio: int = 2):
        super().__init__(
            nn.Linear(hidden, ratio * hidden),
            nn.GELU(),
            nn.Linear(ratio * hidden, hidden),
            nn.Dropout(dropout),
        )


class CausalBlock(nn.Module):
    """Pre-LN block: causal self-attention (coea_kernels.attention, left padding) + MLP."""

    def __init__(self, hidden: int, heads: int, dropout: float, backend: str, ratio: int = 2):
        super().__init__()
        self.heads, self.backend = heads, backend
        self.ln1, self.ln2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.drop = nn.Dropout(dropout)
        self.mlp = MLP(hidden, dropout, ratio)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        from coea_kernels import attention

        b, n, h = x.shape
        q, k, v = (
            self.qkv(self.ln1(x)).view(b, n, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        )
        a = attention(q, k, v, causal=True, lengths=lengths, padding="left", backend=self.backend)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, n, h)))
        return x + self.mlp(self.ln2(x))


def local_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """Causal attention over the last W positions (W = bias.shape[1]), chunked.

    q, k, v [B, H, N, D]; valid [B, N] (False = padding); bias [H, W]: a learned score added
    for each distance 0..W-1 between query and key. Each chunk of W queries reads its own and
    the previous chunk of keys, so the cost is O(N W). Padded query rows output 0.
    """
    b, h, n, d = q.shape
    w = bias.shape[1]
    c = -(-n // w)
    extra = c * w - n
    q, k, v = (F.pad(x, (0, 0, extra, 0)).view(b, h, c, w, d) for x in (q, k, v))
    ok = F.pad(valid, (extra, 0)).view(b, c, w)

    def pairs(x: torch.Tensor) -> torch.Tensor:  # previous chunk and own chunk, [.., c, 2w, ..]
        prev = torch.cat([torch.zeros_like(x[:, :, :1]), x[:, :, :-1]], dim=2)
        return torch.cat([prev, x], dim=3)

    kk, vv = pairs(k), pairs(v)
    okk = pairs(ok[:, None])[:, 0]  # [b, c, 2w]
    dist = w + torch.arange(w, device=q.device)[:, None] - torch.arange(2 * w, device=q.device)
    band = (dist >= 0) & (dist < w)  # [w, 2w]
    scores = (q @ kk.transpose(-1, -2)) * d**-0.5 + bias[:, dist.clamp(0, w - 1)][:, None]
    allowed = band & okk[:, None, :, None, :]
    allowed = allowed | (dist == 0)  # a padded query reads itself (no empty softmax)
    scores = scores.masked_fill(~allowed, float("-inf"))
    out = (scores.softmax(-1) @ vv).view(b, h, c * w, d)[:, :, extra:]
    return out * valid[:, None, :, None].to(out.dtype)


class LocalBlock(nn.Module):
    """Pre-LN block: causal self-attention over the last `window` positions only, with a
    learned per-head bias for each distance, + MLP."""

    def __init__(self, hidden: int, heads: int, window: int, dropout: float, ratio: int = 2):
        super().__init__()
        self.heads, self.window = heads, window
        self.ln1, self.ln2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.rel_bias = nn.Parameter(torch.zeros(heads, window))
        self.proj = nn.Linear(hidden, hidden)
        self.drop = nn.Dropout(dropout)
        self.mlp = MLP(hidden, dropout, ratio)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        b, n, h = x.shape
        q, k, v = (
            self.qkv(self.ln1(x)).view(b, n, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        )
        a = local_attention(q, k, v, valid, self.rel_bias)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, n, h)))
        return x + self.mlp(self.ln2(x))


class DSIE(nn.Module):
    def __init__(self, cfg: DSIEConfig, codes: torch.Tensor, persona: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden
        if h % cfg.heads or not 16 <= h // cfg.heads <= 128:
            raise ValueError(f"hidden/heads must be an integer in 16..128 (got {h}/{cfg.heads})")
        if cfg.branches not in BRANCHES:
            raise ValueError(f"branches must be one of {BRANCHES}")
        self.register_buffer("codes", codes.long().clone(), persistent=True)
        self.code_emb = nn.ModuleList(nn.Embedding(n, h) for n in cfg.code_sizes)
        self.item_emb = nn.Embedding(cfg.n_items, h) if cfg.item_embedding else None
        self.drop = nn.Dropout(cfg.dropout)
        if cfg.has_long:
            self.pos_long = nn.Embedding(cfg.long_len + 1, h)
            self.long_blocks = nn.ModuleList(
                CausalBlock(h, cfg.heads, cfg.dropout, cfg.backend, cfg.mlp_ratio)
                for _ in range(cfg.long_layers)
            )
            self.long_ln = nn.LayerNorm(h)
        if cfg.has_short:
            self.short_blocks = nn.ModuleList(
                LocalBlock(h, cfg.heads, cfg.short_len, cfg.dropout, cfg.mlp_ratio)
                for _ in range(cfg.short_layers)
            )
            self.short_ln = nn.LayerNorm(h)
        if cfg.branches == "both":
            self.gate = nn.Linear(2 * h, h)
        if cfg.group_on:
            if persona is None:
                persona = torch.zeros(cfg.n_groups, cfg.persona_dim)
            self.register_buffer("persona", persona.float().clone(), persistent=True)
            self.group_proj = nn.Linear(cfg.persona_dim, h)
            self.centroid_proj = nn.Linear(cfg.persona_dim, h)
        self.apply(_init)
        if cfg.branches == "both":
            nn.init.constant_(self.gate.bias, cfg.gate_init)

    # ------------------------------------------------------------ embeddings

    def item_table(self) -> torch.Tensor:
        """Item tokens [N, h]: sum of SID level embeddings (+ item-id embedding)."""
        table = sum(emb(self.codes[:, j]) for j, emb in enumerate(self.code_emb))
        if self.item_emb is not None:
            table = table + self.item_emb.weight
        return table

    def _tokens(self, table: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        padded = torch.cat([table, table.new_zeros(1, table.shape[1])])
        return padded[items.clamp(0, table.shape[0])]

    # ------------------------------------------------------------ branches

    def long_states(self, tok, lengths, groups) -> torch.Tensor:
        """Long-term states [B, T + 1, h]: index i + 1 holds the state after item i (left
        padded); the last index is the most recent item, or the group token when the history
        is empty. With the group on, the group token sits just before the first item."""
        b, t, _ = tok.shape
        start = t - lengths  # first valid item index
        idx = torch.arange(t, device=tok.device)
        pos = (idx[None, :] - start[:, None] + 1).clamp(0, self.cfg.long_len)
        valid = idx[None, :] >= start[:, None]
        x = (tok + self.pos_long(pos)) * valid[..., None]
        x = torch.cat([x.new_zeros(b, 1, x.shape[-1]), x], dim=1)
        n = lengths
        if self.cfg.group_on:
            g = self.group_proj(self.persona[groups]) + self.pos_long.weight[0]
            x = x.index_put((torch.arange(b, device=x.device), start), g)
            n = lengths + 1
        x = self.drop(x)
        for block in self.long_blocks:
            x = block(x, n)
        keep = torch.arange(t + 1, device=x.device)[None, :] >= (t + 1 - n)[:, None]
        return self.long_ln(x) * keep[..., None]

    def short_states(self, tok, lengths) -> torch.Tensor:
        """Short-term states [B, T, h] (zero at padded positions)."""
        t = tok.shape[1]
        valid = torch.arange(t, device=tok.device)[None, :] >= (t - lengths)[:, None]
        x = self.drop(tok * valid[..., None])
        for block in self.short_blocks:
            x = block(x, valid)
        return self.short_ln(x) * valid[..., None]

    def fuse(self, hl: torch.Tensor | None, hs: torch.Tensor | None) -> torch.Tensor:
        if hs is None:
            return hl
        if hl is None:
            return hs
        g = torch.sigmoid(self.gate(torch.cat([hl, hs], dim=-1)))
        return g * hl + (1 - g) * hs

    def states(self, items, lengths, groups):
        """(long, short, fused) states at every item position [B, T, h]; a missing branch
        is None."""
        tok = self._tokens(self.item_table(), items)
        hl = self.long_states(tok, lengths, groups)[:, 1:] if self.cfg.has_long else None
        hs = self.short_states(tok, lengths) if self.cfg.has_short else None
        return hl, hs, self.fuse(hl, hs)

    @torch.no_grad()
    def encode(self, items, lengths, groups) -> dict[str, torch.Tensor]:
        """User states after the last item: "long", "short", "fused" [B, h] (zeros for a
        missing branch)."""
        tok = self._tokens(self.item_table(), items)
        b, h = items.shape[0], self.cfg.hidden
        hl = self.long_states(tok, lengths, groups)[:, -1] if self.cfg.has_long else None
        hs = self.short_states(tok, lengths)[:, -1] if self.cfg.has_short else None
        fused = self.fuse(hl, hs)
        zero = tok.new_zeros(b, h)
        return {
            "long": zero if hl is None else hl,
            "short": zero if hs is None else hs,
            "fused": fused,
        }

    # ------------------------------------------------------------ training objective

    def forward(self, items, lengths, groups, targets, negatives=None) -> dict[str, torch.Tensor]:
        """Summed losses over the valid target positions: "next" (next-item cross-entropy,
        full softmax, or sampled over `negatives` [K] shared by the batch), "cluster" (mean
        over SID levels of next-code cross-entropy), "group" (cross-entropy of the user's group
        under a softmax over cos(long state, each group's centroid) / GROUP_TEMPERATURE) and
        "count" (number of targets)."""
        table = self.item_table()
        tok = self._tokens(table, items)
        hl_all = self.long_states(tok, lengths, groups)[:, 1:] if self.cfg.has_long else None
        hs_all = self.short_states(tok, lengths) if self.cfg.has_short else None
        fused = self.fuse(hl_all, hs_all)
        valid = targets >= 0
        f = fused[valid]
        tgt = targets[valid]
        if negatives is None:
            nxt = F.cross_entropy(f @ table.t(), tgt, reduction="sum")
        else:
            pos = (f * table[tgt]).sum(-1, keepdim=True)
            neg = (f @ table[negatives].t()).masked_fill(
                negatives[None, :] == tgt[:, None], float("-inf")
            )
            nxt = -torch.log_softmax(torch.cat([pos, neg], dim=1), dim=1)[:, 0].sum()
        cluster = f.new_zeros(())
        for level in range(self.cfg.levels):
            logits = f @ self.code_emb[level].weight.t()
            cluster = cluster + F.cross_entropy(logits, self.codes[tgt, level], reduction="sum")
        cluster = cluster / max(1, self.cfg.levels)
        group = f.new_zeros(())
        if self.cfg.group_on:
            rows = valid.nonzero()[:, 0]
            centres = F.normalize(self.centroid_proj(self.persona), dim=-1)  # [G, h]
            sims = F.normalize(hl_all[valid], dim=-1) @ centres.t()
            group = F.cross_entropy(sims / GROUP_TEMPERATURE, groups[rows], reduction="sum")
        return {"next": nxt, "cluster": cluster, "group": group, "count": valid.sum()}


def _init(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)


def scores(model: DSIE, user_states, items=None):
    """Full-ranking scores: fused user states [U, h] dot item tokens -> [U, N] (or [U, len(
    items)] for an item subset). Accepts numpy or torch; returns the same kind."""
    import numpy as np

    as_numpy = isinstance(user_states, np.ndarray)
    param = next(model.parameters())
    with torch.no_grad():
        table = model.item_table()
        if items is not None:
            table = table[torch.as_tensor(np.asarray(items), dtype=torch.long, device=param.device)]
        s = torch.as_tensor(user_states, dtype=param.dtype, device=param.device) @ table.t()
    return s.float().cpu().numpy() if as_numpy else s
