"""Training-free generalizers: denoisers built from a training set S_K, mixtures built in.

Each is a ``Denoiser`` (``memgen.diffusion.denoisers``) in VE coordinates x = y + σ n,
samples of the data's shape, σ a number or (B,); each has the exact empirical denoiser
D_K(x, σ) = Σ_i softmax_i(−‖x − y_i‖²/(2σ²)) y_i as a limit (tests/test_issue25_generalizers.py):

    model.kind  D(x, σ)                                              limit: D_K
    smoothed    E_ε[D_K(x + s(1 + σ) ε, σ)], ε ~ N(0, I)              s = 0
    els         per pixel p: Σ_φ softmax_φ(−‖x_P(p) − φ‖²/(2σ²)) φ_c  P ≥ 2·max(H, W) − 1,
                (φ: the P×P patches of S_K; φ_c: a patch's centre)    not equivariant
    gaussian    μ + Σ(Σ + σ² I)⁻¹(x − μ), (μ, Σ) the mean and          (K = 1: D = y_1)
                covariance of S_K (biased, 1/K)

Smoothed closed-form score (Scarvelis, Borde & Solomon 2023, arXiv 2310.12395). Their flow
is x_t = t x_1 + (1 − t) x_0 (x_1 data, x_0 ~ N(0, I)), whose closed-form score is
s_t(x) = (Σ_i softmax_i(−‖x − t y_i‖²/(2(1 − t)²)) t y_i − x)/(1 − t)², and their σ-CFDM
smooths it with a Gaussian: s_{σ,t}(x) = E_{ε~N(0,I)}[s_t(x + σ ε)] (their estimator draws
ε's and perturbs x inside the softmax only; the −σε term has mean zero). In VE coordinates
x_VE = x_t/t, σ_VE = (1 − t)/t, so t = 1/(1 + σ_VE) and their perturbation σ ε of x_t is
σ(1 + σ_VE) ε of x_VE: with s their σ (``model.smoothing``), D_s(x, σ) = E_ε[D_K(x + s(1 +
σ) ε, σ)], which pulls samples toward barycentres of nearby training points. The
expectation is a Monte-Carlo mean over ``draws`` antithetic pairs (ε_m, −ε_m) drawn once
from ``seed`` (common random numbers: D_s is a fixed smooth function of x, as an ODE
sampler needs, and the −σε term cancels exactly).

Equivariant local score machine (Kamb & Ganguli 2024, arXiv 2412.20292). Output pixel p is
the posterior mean of a patch centre given the P×P patch x_P(p) of the noisy input around
p, under a uniform prior over the patches of S_K: all patches at all positions of every
training image (``equivariant``, translation equivariance), or only those at p (locality
alone). Boundary: zero padding of both the input and the training images by ⌊P/2⌋ (a
zero-padded CNN's convention, and that of public ELS code): a patch that leaves the image
holds zeros, in the data's [−1, 1] units. Patches are fixed in size (the paper calibrates
P against each network and time; here P is ``model.patch``). Identical patches are merged
with their count (log-count added to the logit: exact). Blocks of samples and candidate
patches bound memory (online softmax over candidate blocks); convolutions, no pixel loops.

Optimal linear denoiser. Among affine estimators of y from x = y + σ n with y uniform on
S_K, the best in mean square is the Gaussian denoiser of S_K's mean and covariance taken
over the K points themselves (biased, 1/K: the empirical distribution's own covariance).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from memgen.diffusion.denoisers import DEFAULT_MEMORY_BUDGET, EmpiricalDenoiser, GaussianDenoiser
from memgen.errors import UserError

SMOOTHING_DRAWS = 16  # antithetic pairs (ε, −ε) of the smoothed denoiser's Monte-Carlo mean
SMOOTHING_SEED = 0  # the generator of those draws


def per_row(sigma, x: torch.Tensor) -> torch.Tensor:
    """σ as a (B,) tensor in x's dtype and device."""
    return torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(len(x))


class SmoothedDenoiser:
    """Scarvelis et al.'s smoothed closed-form denoiser D_s(x, σ) = E_ε[D_K(x + s(1 + σ) ε,
    σ)] (module docstring), the mean over ``draws`` antithetic pairs of fixed ε ~ N(0, I).

    patterns: (N, ...) in the data's shape and the dtype it computes in; smoothing: s ≥ 0
    (s = 0: D_K exactly)."""

    def __init__(self, patterns: torch.Tensor, smoothing: float, draws: int = SMOOTHING_DRAWS,
                 seed: int = SMOOTHING_SEED, memory_budget: int = DEFAULT_MEMORY_BUDGET):
        if not 0 <= smoothing < float("inf"):
            raise UserError(f"smoothing must be finite and at least 0, got {smoothing}")
        self.exact = EmpiricalDenoiser(patterns, memory_budget)
        self.smoothing = float(smoothing)
        gen = torch.Generator().manual_seed(seed)
        eps = torch.randn((draws, *patterns.shape[1:]), generator=gen, dtype=torch.float64)
        self.eps = torch.cat([eps, -eps]).to(patterns)  # (2·draws, ...)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        if self.smoothing == 0:
            return self.exact(x, sigma)
        sig = per_row(sigma, x)
        m = len(self.eps)
        lam = (self.smoothing * (1 + sig)).reshape(-1, *[1] * (x.ndim - 1))  # (B, 1, ...)
        moved = (x[:, None] + lam[:, None] * self.eps.to(x)[None])  # (B, M, ...)
        out = self.exact(moved.reshape(-1, *x.shape[1:]), sig.repeat_interleave(m))
        return out.reshape(len(x), m, *x.shape[1:]).mean(1)


class ELSDenoiser:
    """Kamb & Ganguli's equivariant local score machine (module docstring): per pixel p,
    Σ_φ softmax_φ(−‖x_P(p) − φ‖²/(2σ²)) φ_c over the P×P patches φ of the training images
    (all positions if ``equivariant``, else those at p), zero padding ⌊P/2⌋.

    patterns: (N, C, H, W); patch: odd P, 1 ≤ P ≤ 2·max(H, W) − 1 (from there on every
    pixel's patch holds the whole image); memory_budget: bytes of one block of logits.

    As matrices: the query patches Q (one row per sample and pixel) and the candidates Φ
    (one row per patch), logits = [2γQ, −γ, 1] · [Φ, ‖φ‖², log count]ᵀ (one GEMM; the
    candidate-free −γ‖x_P(p)‖² left out of the softmax), grouped by pixel without
    equivariance (each pixel its own N candidates)."""

    def __init__(self, patterns: torch.Tensor, patch: int, equivariant: bool = True,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET):
        check_els(tuple(patterns.shape[1:]), patch)
        self.patch, self.pad, self.equivariant = patch, patch // 2, bool(equivariant)
        self.memory_budget = memory_budget
        self.shape = tuple(patterns.shape[1:])
        n, c, h, w = patterns.shape
        patches = self.queries(patterns)  # (N, H·W, C·P²)
        centres = patterns.reshape(n, c, h * w).transpose(1, 2)  # (N, H·W, C)
        if self.equivariant:
            flat = torch.cat([patches, centres], 2).reshape(n * h * w, -1)
            rows, counts = torch.unique(flat, dim=0, return_counts=True)  # sorted: stable
            patches, centres = rows[None, :, :-c], rows[None, :, -c:]  # (1, M, ·)
            log_counts = counts.to(rows.dtype).log()[None]  # (1, M)
        else:
            patches, centres = patches.transpose(0, 1), centres.transpose(0, 1)  # (HW, N, ·)
            log_counts = torch.zeros(patches.shape[:2], dtype=patterns.dtype)
        norms = patches.square().sum(2)
        self.bank = torch.cat([patches, norms[..., None], log_counts[..., None]], 2)
        self.centres = centres  # (G, M, C): G = 1 (equivariant) or H·W

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        """The P×P patch around every pixel, zero-padded: (B, H·W, C·P²)."""
        return F.unfold(F.pad(x, (self.pad,) * 4), self.patch).transpose(1, 2)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        xs = x.to(self.bank.dtype)
        gamma = 1.0 / (2.0 * per_row(sigma, xs).square())  # (B,)
        b, (c, h, w) = len(xs), self.shape
        q = self.queries(xs)  # (B, HW, F)
        g = gamma[:, None, None].expand(b, h * w, 1)
        aug = torch.cat([2 * g * q, -g, torch.ones_like(g)], 2)  # (B, HW, F + 2)
        if self.equivariant:
            out = self._posterior(aug.reshape(1, b * h * w, -1))  # (1, B·HW, C)
        else:
            out = self._posterior(aug.transpose(0, 1))  # (HW, B, C)
            out = out.transpose(0, 1)
        return out.reshape(b, h * w, c).transpose(1, 2).reshape(x.shape).to(x.dtype)

    def _posterior(self, aug: torch.Tensor) -> torch.Tensor:
        """Σ_m softmax_m(aug · bank_m) centre_m per group and row: (G, R, C), rows in blocks
        and candidates ``step`` at a time (online softmax) within the memory budget."""
        groups, total = self.bank.shape[:2]
        per = aug.element_size() * groups * 2  # bytes per (row, candidate): logits, weights
        rows = max(1, min(aug.shape[1], self.memory_budget // (per * total)))
        step = total if rows > 1 else max(1, self.memory_budget // per)
        return torch.cat([self._block(aug[:, i:i + rows], step)
                          for i in range(0, aug.shape[1], rows)], 1)

    def _block(self, aug: torch.Tensor, step: int) -> torch.Tensor:
        bank, centres = self.bank.to(aug), self.centres.to(aug)
        if step >= bank.shape[1]:
            return torch.softmax(aug @ bank.transpose(1, 2), 2) @ centres
        top = num = den = None
        for j in range(0, bank.shape[1], step):
            logits = aug @ bank[:, j:j + step].transpose(1, 2)  # (G, R, M_b)
            block_top = logits.amax(2, keepdim=True)
            new_top = block_top if top is None else torch.maximum(top, block_top)
            wts = (logits - new_top).exp_()
            part, mass = wts @ centres[:, j:j + step], wts.sum(2, keepdim=True)
            if top is None:
                num, den = part, mass
            else:
                scale = (top - new_top).exp()
                num, den = num * scale + part, den * scale + mass
            top = new_top
        return num / den


def check_els(shape: tuple[int, ...], patch: int) -> None:
    """UserError unless samples are images (C, H, W) and ``patch`` is odd, in [1, 2·max(H,
    W) − 1]."""
    if len(shape) != 3:
        raise UserError(f"the ELS machine needs images (C, H, W); these samples have shape "
                        f"{shape}")
    largest = 2 * max(shape[1:]) - 1
    if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1 or patch % 2 == 0:
        raise UserError(f"patch must be an odd whole number of pixels, got {patch!r}")
    if patch > largest:
        raise UserError(f"patch {patch} is larger than the image needs: at {largest} every "
                        f"pixel's patch holds the whole {shape[1]}×{shape[2]} image")


class LinearDenoiser:
    """The optimal linear denoiser of a training set (N, ...): ``GaussianDenoiser`` of its
    mean and biased (1/N) covariance, on samples of the data's shape."""

    def __init__(self, patterns: torch.Tensor):
        if patterns.ndim < 2 or patterns.shape[0] == 0:
            raise UserError("patterns must be a non-empty (N, ...) tensor")
        flat = patterns.reshape(len(patterns), -1).to(torch.float64)
        mean = flat.mean(0)
        centred = flat - mean
        cov = centred.T @ centred / len(flat)  # biased: the empirical distribution's own
        self.gaussian = GaussianDenoiser(mean.to(patterns.dtype), cov.to(patterns.dtype))
        self.dtype = patterns.dtype

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        flat = x.reshape(len(x), -1).to(self.dtype)
        sig = per_row(sigma, flat)
        if len(sig) and bool((sig == sig[0]).all()):
            sig = float(sig[0])  # one level: one inverse, not one per row
        return self.gaussian(flat, sig).reshape(x.shape).to(x.dtype)
