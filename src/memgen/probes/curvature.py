"""Curvature of a model's energy: the Hessian spectrum of E_σ = −log p_σ at given points.

The model is seen only through a denoiser D(x, σ) in variance-exploding (VE) coordinates
(``memgen.diffusion.denoisers``): x = y + σ n, so at noise level σ

    energy     E_σ(x)   = −log p_σ(x),   ∇E_σ(x) = (x − D(x, σ))/σ²
    Hessian    ∇²E_σ(x) = (I − J_D(x))/σ²,   J_D = ∂D(x, σ)/∂x

Dense in low dimension (the denoiser's Jacobian, all D eigenvalues), matrix-free Lanczos
on Hessian-vector products for images (``n_eigen`` extreme eigenvalues). Build an
ε-network's ``EpsDenoiser`` with ``clip=False``: clipping x̂ to [−1, 1] is not the model's
score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

from memgen.errors import UserError
from memgen.probes.checks import F64, check_points, check_sigma


@dataclass(frozen=True)
class HessianSpectrum:
    """Eigenvalues of ∇²E_σ at B points, ascending; trace and asymmetry from dense runs."""

    eigenvalues: torch.Tensor  # (B, D) dense or (B, n_eigen) Lanczos, float64, ascending
    dim: int  # D, coordinates per point
    trace: torch.Tensor | None = None  # (B,) tr ∇²E_σ = (D − tr J_D)/σ²
    asymmetry: torch.Tensor | None = None  # (B,) ‖(J − Jᵀ)/2‖_F / ‖J‖_F, 0 if D is exact

    @property
    def mean_curvature(self) -> torch.Tensor | None:
        """tr ∇²E_σ / D (None for matrix-free runs)."""
        return None if self.trace is None else self.trace / self.dim


def _flat_map(denoiser, shape, sigma: float):
    """v (D,) ↦ D(v as (1, *shape), σ) flattened: the denoiser at one point."""
    def one_point(v: torch.Tensor) -> torch.Tensor:
        return denoiser(v.reshape(1, *shape), sigma).reshape(-1)
    return one_point


def denoiser_jacobian(denoiser, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """J_D = ∂D(x, σ)/∂x at each point, forward mode (torch.func.jacfwd): (B, D, D)."""
    x, sigma = check_points(x, "x"), check_sigma(sigma)
    f = _flat_map(denoiser, x.shape[1:], sigma)
    return torch.stack([torch.func.jacfwd(f)(point.reshape(-1)) for point in x])


def hessian(denoiser, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Dense ∇²E_σ = (I − (J_D + J_Dᵀ)/2)/σ² (the symmetric part): (B, D, D) float64.

    For small D (2-D toys, analytic models); J_D is symmetric for an exact denoiser
    (J_D = Cov_post/σ²), and a learned one's antisymmetric part is dropped.
    """
    return _symmetric_hessian(denoiser_jacobian(denoiser, x, sigma).double(), float(sigma))


def _symmetric_hessian(jac: torch.Tensor, sigma: float) -> torch.Tensor:
    eye = torch.eye(jac.shape[-1], dtype=jac.dtype, device=jac.device)
    return (eye - (jac + jac.mT) / 2) / sigma**2


def hessian_spectrum(denoiser, x: torch.Tensor, sigma: float) -> HessianSpectrum:
    """All D eigenvalues of ``hessian`` (eigvalsh), its trace and the Jacobian's asymmetry."""
    jac = denoiser_jacobian(denoiser, x, sigma).double()
    sigma, dim = float(sigma), jac.shape[-1]
    eigenvalues = torch.linalg.eigvalsh(_symmetric_hessian(jac, sigma))
    trace = (dim - jac.diagonal(dim1=-2, dim2=-1).sum(-1)) / sigma**2
    norm = jac.norm(dim=(-2, -1))
    asymmetry = torch.where(norm > 0, ((jac - jac.mT) / 2).norm(dim=(-2, -1)) / norm, 0.0)
    return HessianSpectrum(eigenvalues.cpu(), dim, trace.cpu(), asymmetry.cpu())


def hessian_eigsh(denoiser, x: torch.Tensor, sigma: float, n_eigen: int = 6, *,
                  which: str = "LA", symmetrize: bool = True, tol: float | None = None,
                  ncv: int | None = None, maxiter: int | None = None,
                  seed: int = 0) -> HessianSpectrum:
    """n_eigen extreme eigenvalues of ∇²E_σ per point, matrix-free: ARPACK Lanczos (eigsh) on
    H v = (v − J_s v)/σ², J_s v = (J_D v + J_Dᵀ v)/2 by one jvp and one vjp.

    which: "LA" largest, "SA" smallest (algebraic). symmetrize=False uses J_D v alone (half
    the cost; only right when J_D is symmetric, e.g. an exact denoiser). Points go one at a
    time; tol (ARPACK's relative accuracy) defaults to 1e-10 for float64 x and 1e-5
    otherwise; ncv, maxiter as in eigsh. The start vector comes from numpy's PCG64(seed),
    so runs repeat exactly. Eigenvalues ARPACK leaves unconverged are NaN (sorted last).
    Near a memory most directions have curvature ≈ 1/σ² (posterior variance ≈ 0), so the
    top of the spectrum is clustered there and "LA" converges slowly; "SA" (flat and
    unstable directions) is the informative end.
    """
    x, sigma = check_points(x, "x"), check_sigma(sigma)
    dim = x[0].numel()
    if which not in ("LA", "SA"):
        raise UserError(f"which must be 'LA' or 'SA', got {which!r}")
    if int(n_eigen) != n_eigen or not 1 <= n_eigen < dim:
        raise UserError(f"n_eigen must be an integer in [1, D - 1] = [1, {dim - 1}], "
                         f"got {n_eigen}")
    tol = (1e-10 if x.dtype == F64 else 1e-5) if tol is None else tol
    options = dict(k=n_eigen, which=which, tol=tol, ncv=ncv, maxiter=maxiter,
                   v0=np.random.default_rng(seed).standard_normal(dim))
    out = [_extreme_eigenvalues(_hessian_operator(denoiser, point, sigma, symmetrize), options)
           for point in x]
    return HessianSpectrum(torch.as_tensor(np.stack(out), dtype=F64), dim)


def _extreme_eigenvalues(op: LinearOperator, options: dict) -> np.ndarray:
    """eigsh's eigenvalues, ascending, NaN-padded to options["k"] (eigsh's name for
    n_eigen) when ARPACK does not converge."""
    try:
        values = eigsh(op, return_eigenvectors=False, **options)
    except ArpackNoConvergence as err:
        values = np.asarray(err.eigenvalues, dtype=np.float64)
    return np.sort(np.concatenate([values, np.full(options["k"] - len(values), np.nan)]))


def _hessian_operator(denoiser, point: torch.Tensor, sigma: float,
                      symmetrize: bool) -> LinearOperator:
    """v ↦ (v − J_s v)/σ² at one point, as a float64 scipy LinearOperator."""
    f = _flat_map(denoiser, point.shape, sigma)
    p = point.reshape(-1)
    vjp = torch.func.vjp(f, p)[1] if symmetrize else None

    def matvec(v: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64).reshape(-1)).to(p)
        jv = torch.func.jvp(f, (p,), (t,))[1]
        if symmetrize:
            jv = (jv + vjp(t)[0]) / 2
        return ((t - jv) / sigma**2).double().cpu().numpy()

    return LinearOperator((p.numel(), p.numel()), matvec=matvec, dtype=np.float64)


__all__ = ["HessianSpectrum", "denoiser_jacobian", "hessian", "hessian_spectrum",
           "hessian_eigsh"]
