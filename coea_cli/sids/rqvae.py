"""Residual quantisation of item vectors: an RQ-VAE (torch) and residual k-means.

RQ-VAE (Zeghidour et al. 2021; Rajput et al. 2023, TIGER): an MLP encoder maps an item
vector x to a latent z; L codebooks quantise z residually (level l picks the code nearest
to r_l = z - e_1 - ... - e_{l-1}); the decoder reconstructs x from e_1 + ... + e_L with the
straight-through estimator. Loss per item:

    ||x - dec(z_q)||^2 + sum_l ( ||sg(r_l) - e_l||^2 + beta * ||r_l - sg(e_l)||^2 )

Each codebook is initialised by k-means on the residuals of a sample of the catalogue
under the untrained encoder. Codes unused during one pass over the data are re-seeded
from the current batch's residuals at that level, so no level collapses. Training stops
early when the epoch's reconstruction loss has not improved for `patience` epochs; the
best weights are kept.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from coea_cli import console
from coea_cli.options import SidOptions
from coea_cli.sids.kmeans import assign, kmeans


@dataclass
class RQConfig:
    """RQ-VAE settings; options-backed fields come from `from_options` (their defaults are
    defined once, in `SidOptions`)."""

    sizes: tuple[int, ...]
    latent: int
    hidden: tuple[int, ...]
    beta: float
    lr: float
    batch_size: int
    epochs: int
    patience: int
    init_sample: int
    cpu_threads: int  # intra-op threads on CPU; 0 = torch's default
    min_delta: float = 1e-3
    reset_dead: bool = True

    @classmethod
    def from_options(cls, o: SidOptions, sizes: tuple[int, ...], n_items: int) -> RQConfig:
        return cls(
            sizes=sizes,
            latent=o.latent_dim,
            hidden=o.hidden_widths(),
            beta=o.beta,
            lr=o.lr,
            batch_size=o.batch_size,
            epochs=o.max_epochs(n_items),
            patience=o.patience,
            init_sample=o.init_sample,
            cpu_threads=o.cpu_threads,
        )

    @property
    def levels(self) -> int:
        return len(self.sizes)


@dataclass
class Quantized:
    """Result of residual quantisation of N items into L levels."""

    codes: np.ndarray  # [N, L] int64
    codebooks: list[np.ndarray]  # level l: [K_l, d]
    last_residual: np.ndarray  # [N, d] input of the last level
    error_by_level: list[float]  # mean squared residual norm after levels 1..L
    recon_mse: float  # mean over items of ||x - x_hat||^2
    recon_relative: float  # recon_mse / mean ||x||^2
    tensors: dict = field(default_factory=dict)  # what to save (weights, codebooks)
    info: dict = field(default_factory=dict)


def _mlp(dims):
    from torch import nn

    layers = []
    for a, b in itertools.pairwise(dims):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _torch_model(in_dim: int, cfg: RQConfig):
    import torch
    from torch import nn

    class RQVAE(nn.Module):
        """MLP encoder/decoder around L residual codebooks."""

        def __init__(self):
            super().__init__()
            dims = [in_dim, *cfg.hidden, cfg.latent]
            self.encoder = _mlp(dims)
            self.decoder = _mlp(dims[::-1])
            self.codebooks = nn.ParameterList(
                [nn.Parameter(torch.zeros(k, cfg.latent)) for k in cfg.sizes]
            )

        def quantize(self, z, levels: int | None = None):
            """-> (z_q, codes [B, L], codebook loss, commitment loss, residuals per level)."""
            residual = z
            zq = torch.zeros_like(z)
            codes, residuals = [], []
            cb_loss = commit = z.new_zeros(())
            for cb in list(self.codebooks)[:levels]:
                residuals.append(residual)
                d = (
                    residual.pow(2).sum(1, keepdim=True)
                    - 2 * residual @ cb.T
                    + cb.pow(2).sum(1)[None]
                )
                idx = d.argmin(1)
                e = cb[idx]
                cb_loss = cb_loss + (residual.detach() - e).pow(2).sum(1).mean()
                commit = commit + (residual - e.detach()).pow(2).sum(1).mean()
                zq = zq + e
                residual = residual - e.detach()
                codes.append(idx)
            return zq, torch.stack(codes, 1), cb_loss, commit, residuals

        def forward(self, x):
            z = self.encoder(x)
            zq, codes, cb_loss, commit, residuals = self.quantize(z)
            xr = self.decoder(z + (zq - z).detach())  # straight-through
            return xr, codes, cb_loss, commit, residuals

    return RQVAE()


def _check(x: np.ndarray, sizes) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError("need a [N, d] array with N >= 2")
    if max(sizes) > len(x):
        raise ValueError(f"codebook size {max(sizes)} exceeds the number of items {len(x)}")
    return x


def init_codebooks(model, x, cfg: RQConfig, seed: int) -> list[int]:
    """k-means initialisation of each level on a sample's latent residuals.

    Returns the number of non-empty k-means clusters per level.
    """
    import torch

    n = len(x)
    m = min(n, max(cfg.init_sample, max(cfg.sizes)))
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.permutation(n)[:m]) if m < n else np.arange(n)
    with torch.no_grad():
        r = model.encoder(x[torch.from_numpy(sample).to(x.device)]).cpu().numpy()
    filled = []
    for level, cb in enumerate(model.codebooks):
        centers, labels = kmeans(r, cb.shape[0], seed=seed + level)
        filled.append(int((np.bincount(labels, minlength=cb.shape[0]) > 0).sum()))
        with torch.no_grad():
            cb.copy_(torch.from_numpy(centers))
        r = r - centers[labels]
    return filled


def train_rqvae(
    x: np.ndarray, cfg: RQConfig, seed: int = 0, device: str = "cpu", progress: bool = True
) -> Quantized:
    """Train an RQ-VAE on item vectors x [N, d] and quantise every item.

    On CPU it runs with `cfg.cpu_threads` intra-op threads (default 1): the model's matrices
    are too small to gain from more, and idle-spinning threads slow down badly on a busy
    machine.
    """
    import torch

    before = torch.get_num_threads()
    if str(device).startswith("cpu") and cfg.cpu_threads > 0:
        torch.set_num_threads(cfg.cpu_threads)
    try:
        return _train(x, cfg, seed, device, progress)
    finally:
        torch.set_num_threads(before)


def _train(x, cfg: RQConfig, seed: int, device: str, progress: bool) -> Quantized:
    import torch

    x_np = _check(x, cfg.sizes)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy(x_np).to(device)
    n, levels = len(x_np), cfg.levels
    model = _torch_model(x_np.shape[1], cfg).to(device)
    model.eval()
    init_filled = init_codebooks(model, xt, cfg, seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    bs = min(cfg.batch_size, n)
    steps_per_epoch = math.ceil(n / bs)
    usage = [torch.zeros(k, dtype=torch.long, device=device) for k in cfg.sizes]
    best, best_state, best_epoch, wait = math.inf, None, -1, 0
    history, resets, step = [], [0] * levels, 0
    bar = console.progress("training RQ-VAE", cfg.epochs, "epochs") if progress else _quiet()
    with bar as advance:
        for epoch in range(cfg.epochs):
            model.train()
            perm = torch.randperm(n, generator=gen).to(device)
            epoch_codes = torch.empty(n, levels, dtype=torch.long, device=device)
            total = 0.0
            for s in range(0, n, bs):
                idx = perm[s : s + bs]
                xb = xt[idx]
                xr, codes, cb_loss, commit, residuals = model(xb)
                recon = (xr - xb).pow(2).sum(1).mean()
                loss = recon + cb_loss + cfg.beta * commit
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(recon.detach()) * len(idx)
                epoch_codes[idx] = codes.detach()
                for level in range(levels):
                    usage[level] += torch.bincount(codes[:, level], minlength=cfg.sizes[level])
                step += 1
                if cfg.reset_dead and step % steps_per_epoch == 0:
                    for level in range(levels):
                        resets[level] += _reset_dead(
                            model, opt, level, usage[level], residuals[level].detach(), gen
                        )
                        usage[level].zero_()
            recon_epoch = total / n
            history.append(round(recon_epoch, 6))
            util = len(torch.unique(epoch_codes[:, 0])) / cfg.sizes[0]
            uniq = len(torch.unique(epoch_codes, dim=0)) / n
            advance(1, recon=recon_epoch, util=round(util, 3), unique=round(uniq, 3))
            if recon_epoch < best * (1 - cfg.min_delta):
                best, best_epoch, wait = recon_epoch, epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                wait += 1
                if wait >= cfg.patience:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    q = quantize_all(model, xt)
    q.tensors = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    q.info = {
        "epochs_run": len(history),
        "best_epoch": best_epoch + 1,
        "stopped_early": len(history) < cfg.epochs,
        "steps": step,
        "recon_history": history,
        "dead_code_resets": resets,
        "init_nonempty_clusters": init_filled,
        "config": asdict(cfg),
        "in_dim": int(x_np.shape[1]),
    }
    return q


def _reset_dead(model, opt, level: int, usage, residual, gen) -> int:
    """Re-seed codes of one level unused since the last reset with batch residuals."""
    import torch

    dead = torch.nonzero(usage == 0).flatten()
    if len(dead) == 0:
        return 0
    pick = torch.randint(len(residual), (len(dead),), generator=gen).to(residual.device)
    cb = model.codebooks[level]
    with torch.no_grad():
        cb[dead] = residual[pick]
    state = opt.state.get(cb, {})
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            state[key][dead] = 0
    return len(dead)


def quantize_all(model, xt, chunk: int = 8192) -> Quantized:
    """Codes, last-level residuals and reconstruction error for all items (eval mode)."""
    import torch

    model.eval()
    codes, last, errs, recon, norms = [], [], None, 0.0, 0.0
    with torch.no_grad():
        for s in range(0, len(xt), chunk):
            xb = xt[s : s + chunk]
            z = model.encoder(xb)
            zq, c, _, _, residuals = model.quantize(z)
            xr = model.decoder(zq)
            recon += float((xr - xb).pow(2).sum())
            norms += float(xb.pow(2).sum())
            codes.append(c.cpu().numpy())
            last.append(residuals[-1].cpu().numpy())
            after = [*residuals[1:], z - zq]
            e = np.array([float(r.pow(2).sum()) for r in after])
            errs = e if errs is None else errs + e
    n = len(xt)
    return Quantized(
        codes=np.concatenate(codes).astype(np.int64),
        codebooks=[cb.detach().cpu().numpy() for cb in model.codebooks],
        last_residual=np.concatenate(last),
        error_by_level=[float(v / n) for v in errs],
        recon_mse=recon / n,
        recon_relative=recon / max(norms, 1e-12),
    )


def rq_kmeans(
    x: np.ndarray, sizes, seed: int = 0, fit_sample: int = 50_000, progress: bool = True
) -> Quantized:
    """Residual k-means on the item vectors themselves (no encoder): fast baseline."""
    x = _check(x, sizes)
    n = len(x)
    rng = np.random.default_rng(seed)
    m = min(n, max(fit_sample, max(sizes)))
    sample = np.sort(rng.permutation(n)[:m]) if m < n else np.arange(n)
    residual = x.copy()
    codes, books, errs, last = [], [], [], residual
    bar = console.progress("residual k-means", len(sizes), "levels") if progress else _quiet()
    with bar as advance:
        for level, k in enumerate(sizes):
            last = residual.copy()
            centers, _ = kmeans(residual[sample], k, seed=seed + level)
            labels, _ = assign(residual, centers)
            residual -= centers[labels]
            codes.append(labels)
            books.append(centers)
            errs.append(float((residual**2).sum(1).mean()))
            advance(1, level=level + 1, error=errs[-1])
    norms = float((x**2).sum(1).mean())
    return Quantized(
        codes=np.stack(codes, 1).astype(np.int64),
        codebooks=books,
        last_residual=last,
        error_by_level=errs,
        recon_mse=errs[-1],
        recon_relative=errs[-1] / max(norms, 1e-12),
        tensors={f"codebooks.{i}": b for i, b in enumerate(books)},
        info={"fit_sample": m, "in_dim": int(x.shape[1])},
    )


def _quiet():
    from contextlib import nullcontext

    return nullcontext(lambda n=1, **fields: None)
