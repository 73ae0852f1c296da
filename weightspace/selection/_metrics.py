"""Transferability metrics: pure JAX functions of (features and/or source probabilities, labels).

One sign convention throughout: higher = more transferable. Every public metric validates its
input on the host (shapes, label range, NaN/Inf) and then calls a jitted core written for ONE
candidate model; :func:`weightspace.selection.score_all` vmaps the same cores over models.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import digamma, gammaln, logsumexp, xlogy
from jaxtyping import Array, Float, Int

from weightspace._errors import InvalidValueError
from weightspace.selection._gmm import fit_gmm, gmm_posterior
from weightspace.selection._validate import as_float_array, as_labels, as_probs, class_table, is_traced

# ---------------------------------------------------------------------------------------------
# Probability-based metrics: LEEP, NCE, PACTran
# ---------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _leep_core(p: Array, y: Array, num_classes: int) -> Array:
    n = p.shape[0]
    onehot = jax.nn.one_hot(y, num_classes, dtype=p.dtype)
    joint = onehot.T @ p / n  # [C, Cs] empirical P(y, z)
    pz = jnp.sum(joint, axis=0, keepdims=True)
    # A source class of zero mass has theta_z(x) = 0 for every x: its P(y | z) never matters.
    p_y_given_z = jnp.where(pz > 0, joint / jnp.where(pz > 0, pz, 1.0), 0.0)
    eep = jnp.sum(p * p_y_given_z[y], axis=1)
    return jnp.mean(jnp.log(eep))


def leep(
    probs: Float[Array, "n source_classes"], labels: Int[Array, " n"], *, num_classes: int | None = None
) -> Float[Array, ""]:
    """LEEP: log expected empirical prediction of the target labels through the source classifier.

    .. math::
        P(y, z) = \\tfrac1N \\sum_i \\theta_z(x_i) [y_i = y],\\quad
        \\mathrm{LEEP} = \\tfrac1N \\sum_i \\log \\sum_z P(y_i \\mid z)\\, \\theta_z(x_i).

    Args:
        probs: ``[N, Cs]`` source-class probabilities (softmax outputs) on the target data.
        labels: ``[N]`` target classes.
        num_classes: number of target classes (default ``max(labels) + 1``).

    Returns:
        Scalar LEEP (``<= 0``; 0 when the source predictions determine the label).

    Example:
        >>> import numpy as np
        >>> from weightspace.selection import leep
        >>> y = np.arange(8) % 4
        >>> round(float(leep(np.eye(4)[y], y)), 6)
        0.0

    References:
        Nguyen et al., "LEEP: A New Measure to Evaluate Transferability of Learned Representations", ICML 2020.
    """
    p = as_probs(probs)
    y, c = as_labels(labels, p.shape[0], num_classes=num_classes)
    return _leep_core(p, y, num_classes=c)


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _nce_core(p: Array, y: Array, num_classes: int) -> Array:
    n, cs = p.shape
    z = jnp.argmax(p, axis=1)
    dt = p.dtype
    joint = jax.nn.one_hot(y, num_classes, dtype=dt).T @ jax.nn.one_hot(z, cs, dtype=dt) / n  # [C, Cs]
    pz = jnp.sum(joint, axis=0)
    p_y_given_z = jnp.where(pz > 0, joint / jnp.where(pz > 0, pz, 1.0), 0.0)
    h_y_given_z = -jnp.sum(pz * jnp.sum(xlogy(p_y_given_z, p_y_given_z), axis=0))
    return -h_y_given_z


def nce(
    probs: Float[Array, "n source_classes"], labels: Int[Array, " n"], *, num_classes: int | None = None
) -> Float[Array, ""]:
    """NCE: negative conditional entropy ``-H(Y | Z)`` of target labels given source labels.

    .. math::
        z_i = \\arg\\max_z \\theta_z(x_i),\\quad \\mathrm{NCE} = \\sum_{y,z} \\hat P(y, z) \\log \\hat P(y \\mid z).

    Args:
        probs: ``[N, Cs]`` source-class probabilities (only their argmax is used), or one-hot
            source labels.
        labels: ``[N]`` target classes.
        num_classes: number of target classes (default ``max(labels) + 1``).

    Returns:
        Scalar NCE (``<= 0``).

    Example:
        >>> import numpy as np
        >>> from weightspace.selection import nce
        >>> y = np.array([0, 0, 1, 1])
        >>> round(float(nce(np.eye(2)[y], y)), 6), round(float(nce(np.eye(2)[[0, 0, 0, 0]], y)), 4)
        (0.0, -0.6931)

    References:
        Tran et al., "Transferability and Hardness of Supervised Classification Tasks", ICCV 2019.
    """
    p = as_probs(probs)
    y, c = as_labels(labels, p.shape[0], num_classes=num_classes)
    return _nce_core(p, y, num_classes=c)


@functools.partial(jax.jit, static_argnames=("num_classes", "n_iter"))
def _pactran_core(p: Array, y: Array, alpha: Array, num_classes: int, n_iter: int = 10) -> Array:
    n, _ = p.shape
    dt = p.dtype
    onehot = jax.nn.one_hot(y, num_classes, dtype=dt)
    counts = jnp.sum(onehot, axis=0)[:, None]  # [C, 1]
    a0 = alpha * counts / n + 1e-10
    log_s = jnp.log(p + 1e-10)

    def body(_i: int, carry: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
        qz = carry[0]
        aw = a0 + onehot.T @ qz  # [C, Cs]
        logits = log_s + digamma(aw)[y] - digamma(jnp.sum(aw, axis=0))[None, :]
        log_qz = logits - logsumexp(logits, axis=-1, keepdims=True)
        return jnp.exp(log_qz), log_qz, aw

    qz, log_qz, aw = jax.lax.fori_loop(0, n_iter, body, (p, jnp.zeros_like(p), a0 + onehot.T @ p))
    log_c0 = gammaln(jnp.sum(a0)) - jnp.sum(gammaln(a0))
    log_c = gammaln(jnp.sum(aw, axis=0)) - jnp.sum(gammaln(aw), axis=0)
    raw = -jnp.sum(log_c0 - log_c - jnp.sum(qz * (log_qz - log_s), axis=0)) / (n * num_classes)
    return -raw


def pactran(
    probs: Float[Array, "n source_classes"],
    labels: Int[Array, " n"],
    *,
    alpha: float = 1.0,
    n_iter: int = 10,
    num_classes: int | None = None,
) -> Float[Array, ""]:
    """PACTran-Dirichlet: minus the PAC-Bayesian bound of a Dirichlet-multinomial head on ``theta``.

    A Dirichlet prior ``Dir(a0)`` with ``a0_y = alpha * n_y / N`` on ``P(y | z)``; ``q(z | x_i)`` is
    refined by ``n_iter`` mean-field steps starting from ``theta(x_i)``; the bound is

    .. math::
        B = -\\frac{1}{N C}\\sum_z \\Big[\\log C(a_0) - \\log C(a_z) - \\sum_i q_{iz}
        (\\log q_{iz} - \\log \\theta_z(x_i))\\Big],\\quad
        \\log C(a) = \\log\\Gamma(\\textstyle\\sum a) - \\sum \\log\\Gamma(a),

    as in google-research/pactran_metrics ``calculate_pac_dir``. This returns ``-B`` (the bound is a
    risk: lower is better), the sign Model Spider reports.

    Args:
        probs: ``[N, Cs]`` source-class probabilities on the target data.
        labels: ``[N]`` target classes.
        alpha: Dirichlet concentration (the paper's lambda).
        n_iter: mean-field iterations (10 in the reference).
        num_classes: number of target classes (default ``max(labels) + 1``).

    Returns:
        Scalar ``-B`` (higher = more transferable).

    Example:
        >>> import numpy as np
        >>> from weightspace.selection import pactran
        >>> y = np.arange(40) % 4
        >>> bool(pactran(np.eye(4)[y] * 0.9 + 0.025, y) > pactran(np.full((40, 4), 0.25), y))
        True

    References:
        Ding et al., "PACTran: PAC-Bayesian Metrics for Estimating the Transferability of Pretrained
        Models to Classification Tasks", ECCV 2022.
    """
    p = as_probs(probs)
    y, c = as_labels(labels, p.shape[0], num_classes=num_classes)
    return _pactran_core(p, y, jnp.asarray(alpha, p.dtype), num_classes=c, n_iter=n_iter)


# ---------------------------------------------------------------------------------------------
# Feature-based metrics
# ---------------------------------------------------------------------------------------------


def _class_stats(f: Array, y: Array, num_classes: int) -> tuple[Array, Array, Array]:
    """Class counts ``[C]``, class means ``[C, D]`` (0 for absent classes) and the global mean."""
    onehot = jax.nn.one_hot(y, num_classes, dtype=f.dtype)
    counts = jnp.sum(onehot, axis=0)
    means = (onehot.T @ f) / jnp.maximum(counts, 1.0)[:, None]
    return counts, means, jnp.mean(f, axis=0)


def _default_rcond(n: int, d: int, dtype: Any) -> float:
    return 10.0 * max(n, d) * float(jnp.finfo(dtype).eps)


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _h_score_core(f: Array, y: Array, rcond: Array, num_classes: int) -> Array:
    n = f.shape[0]
    counts, means, mu = _class_stats(f, y, num_classes)
    fc = f - mu
    lam, v = jnp.linalg.eigh(fc.T @ fc / (n - 1))
    keep = jnp.abs(lam) > rcond * jnp.max(jnp.abs(lam))
    inv = jnp.where(keep, 1.0 / jnp.where(keep, lam, 1.0), 0.0)
    proj = ((means - mu) * jnp.sqrt(counts / (n - 1))[:, None]) @ v  # between-class scatter factor
    return jnp.sum(proj**2 * inv[None, :])


def h_score(
    features: Float[Array, "n d"],
    labels: Int[Array, " n"],
    *,
    rcond: float | None = None,
    num_classes: int | None = None,
) -> Float[Array, ""]:
    """H-score: ``tr(cov(F)^+ cov(E[F | y]))``, the Fisher-style class separation of the features.

    .. math::
        H = \\operatorname{tr}\\big(\\Sigma_F^{+}\\, \\Sigma_{E[F\\mid y]}\\big),\\quad
        \\Sigma_{E[F\\mid y]} = \\tfrac{1}{N-1}\\sum_c n_c(\\mu_c-\\mu)(\\mu_c-\\mu)^\\top.

    The pseudo-inverse drops eigenvalues below ``rcond * max`` (default ``10 max(N, D) eps``), so
    ``H = C - 1`` exactly when ``N <= D`` (the covariance is singular and the score saturates).

    Args:
        features: ``[N, D]`` target features under one model.
        labels: ``[N]`` target classes.
        rcond: relative eigenvalue cut-off of the pseudo-inverse.
        num_classes: number of classes (default ``max(labels) + 1``).

    Returns:
        Scalar H-score in ``[0, C - 1]``.

    Example:
        >>> import numpy as np
        >>> from weightspace.selection import h_score
        >>> rng = np.random.default_rng(0)
        >>> y = np.arange(200) % 2
        >>> float(h_score(rng.standard_normal((200, 4)) + 5.0 * y[:, None], y)) > 0.9
        True

    References:
        Bao et al., "An Information-Theoretic Approach to Transferability in Task Transfer Learning", ICIP 2019.
    """
    f = as_float_array(features, "features")
    y, c = as_labels(labels, f.shape[0], num_classes=num_classes)
    r = _default_rcond(f.shape[0], f.shape[1], f.dtype) if rcond is None else rcond
    return _h_score_core(f, y, jnp.asarray(r, f.dtype), num_classes=c)


def ledoit_wolf(x: Float[Array, "n d"]) -> tuple[Float[Array, "d d"], Float[Array, ""]]:
    """Ledoit-Wolf shrunk covariance of ``x`` (rows are samples) and its shrinkage, as scikit-learn.

    .. math::
        \\hat\\Sigma = (1-s) S + s\\, \\mu I,\\quad S = \\tfrac1N X_c^\\top X_c,\\quad \\mu = \\operatorname{tr}S / D,

    with ``s = min(beta, delta) / delta`` of Ledoit & Wolf (2004).

    Example:
        >>> import numpy as np
        >>> from weightspace.selection import ledoit_wolf
        >>> cov, s = ledoit_wolf(np.random.default_rng(0).standard_normal((50, 5)))
        >>> cov.shape, 0.0 <= float(s) <= 1.0
        ((5, 5), True)
    """
    x = jnp.asarray(x)
    cov, s, _ = _ledoit_wolf_eig(x - jnp.mean(x, axis=0))
    return cov, s


def _ledoit_wolf_eig(xc: Array) -> tuple[Array, Array, Array]:
    n, p = xc.shape
    emp = xc.T @ xc / n
    row2 = jnp.sum(xc * xc, axis=1)
    trace = jnp.sum(row2) / n
    mu = trace / p
    delta_ = jnp.sum(emp * emp)
    beta_ = (jnp.sum(row2 * row2) / n - delta_) / (p * n)
    delta = (delta_ - 2.0 * mu * trace + p * mu**2) / p
    beta = jnp.minimum(beta_, delta)
    s = jnp.where(delta > 0, beta / jnp.where(delta > 0, delta, 1.0), 0.0) if p > 1 else jnp.zeros((), xc.dtype)
    cov = (1.0 - s) * emp + s * mu * jnp.eye(p, dtype=xc.dtype)
    return cov, s, emp


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _reg_h_score_core(f: Array, y: Array, num_classes: int) -> Array:
    n, _ = f.shape
    counts, means, mu = _class_stats(f, y, num_classes)
    cov, s, _ = _ledoit_wolf_eig(f - mu)
    lam, v = jnp.linalg.eigh(cov)
    proj = ((means - mu) * jnp.sqrt(counts / (n - 1))[:, None]) @ v
    return (1.0 - s) * jnp.sum(proj**2 / lam[None, :])


def regularized_h_score(
    features: Float[Array, "n d"], labels: Int[Array, " n"], *, num_classes: int | None = None
) -> Float[Array, ""]:
    """H-score with a Ledoit-Wolf shrunk feature covariance (tllib's ``regularized_h_score``).

    .. math::
        H_\\alpha = \\operatorname{tr}\\big(\\hat\\Sigma_{LW}^{-1}\\, (1-s)\\,\\Sigma_{E[F\\mid y]}\\big)

    Args:
        features: ``[N, D]`` target features.
        labels: ``[N]`` target classes.
        num_classes: number of classes (default ``max(labels) + 1``).

    Returns:
        Scalar regularized H-score.

    Example:
        >>> import numpy as np
        >>> from weightspace.selection import regularized_h_score
        >>> rng = np.random.default_rng(0)
        >>> y = np.arange(100) % 2
        >>> float(regularized_h_score(rng.standard_normal((100, 4)) + 5.0 * y[:, None], y)) > 0.5
        True

    References:
        Ibrahim et al., "Newer is not always better: Rethinking transferability metrics", ICLR 2023.
    """
    f = as_float_array(features, "features")
    y, c = as_labels(labels, f.shape[0], num_classes=num_classes)
    return _reg_h_score_core(f, y, num_classes=c)


def _logdet_i_plus_gram(x: Array, scale: Array) -> Array:
    """``log det(I + scale X^T X)``, through the smaller of the two Gram matrices."""
    n, d = x.shape
    g = x @ x.T if n < d else x.T @ x
    k = g.shape[0]
    chol = jnp.linalg.cholesky(jnp.eye(k, dtype=x.dtype) + scale * g)
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol)))


@jax.jit
def _transrate_core(f: Array, index: Array, counts: Array, eps: Array) -> Array:
    n, _ = f.shape
    fc = f - jnp.mean(f, axis=0)
    rz = 0.5 * _logdet_i_plus_gram(fc, 1.0 / (n * eps))
    padded = jnp.concatenate([fc, jnp.zeros((1, fc.shape[1]), fc.dtype)])  # padding rows are zero

    def per_class(args: tuple[Array, Array]) -> Array:
        idx, cnt = args
        return 0.5 * _logdet_i_plus_gram(padded[idx], 1.0 / (jnp.maximum(cnt, 1) * eps))

    rzy = jax.lax.map(per_class, (index, counts.astype(f.dtype)))
    return rz - jnp.mean(rzy)


def transrate(
    features: Float[Array, "n d"], labels: Int[Array, " n"], *, eps: float = 1e-4, num_classes: int | None = None
) -> Float[Array, ""]:
    """TransRate: coding rate of all features minus the mean per-class coding rate.

    .. math::
        R(F, \\epsilon) = \\tfrac12 \\log\\det\\big(I + \\tfrac{1}{n\\epsilon} F^\\top F\\big),\\quad
        \\mathrm{TransRate} = R(F) - \\tfrac1C \\sum_c R(F_c),

    with ``F`` centred by its column means (tllib's convention; an empty class counts as 0).

    Args:
        features: ``[N, D]`` target features.
        labels: ``[N]`` target classes (concrete: the per-class row table is built on the host).
        eps: distortion ``epsilon``.
        num_classes: number of classes (default ``max(labels) + 1``).

    Returns:
        Scalar TransRate.

    Example:
        >>> import numpy as np
        >>> from weightspace.selection import transrate
        >>> rng = np.random.default_rng(0)
        >>> y = np.arange(100) % 2
        >>> f = rng.standard_normal((100, 4)) + 3.0 * np.eye(4)[y]
        >>> round(float(transrate(f, y)), 3)
        0.026

    References:
        Huang et al., "Frustratingly Easy Transferability Estimation", ICML 2022.
    """
    f = as_float_array(features, "features")
    y, c = as_labels(labels, f.shape[0], num_classes=num_classes)
    if is_traced(y):
        raise InvalidValueError("transrate needs concrete labels (its per-class table is built on the host)")
    index, counts = class_table(np.asarray(y), c)
    return _transrate_core(f, jnp.asarray(index), jnp.asarray(counts), jnp.asarray(eps, f.dtype))


def pca(features: Float[Array, "n d"], k: int) -> tuple[Float[Array, "n k"], Float[Array, " k"]]:
    """Project centred features on their top ``k`` principal axes; also return explained-variance ratios.

    Example:
        >>> import numpy as np
        >>> from weightspace.selection import pca
        >>> z, ratio = pca(np.random.default_rng(0).standard_normal((20, 6)), 3)
        >>> z.shape, bool(ratio[0] >= ratio[1] >= ratio[2])
        ((20, 3), True)
    """
    return _pca(jnp.asarray(features), k)


def _pca(f: Array, k: int) -> tuple[Array, Array]:
    n, d = f.shape
    fc = f - jnp.mean(f, axis=0)
    if n < d:
        lam, u = jnp.linalg.eigh(fc @ fc.T)
        lam, u = lam[::-1], u[:, ::-1]
        z = u * jnp.sqrt(jnp.clip(lam, 0.0))[None, :]  # F V = U S
    else:
        lam, v = jnp.linalg.eigh(fc.T @ fc)
        lam, v = lam[::-1], v[:, ::-1]
        z = fc @ v
    lam = jnp.clip(lam, 0.0)
    ratio = lam / jnp.sum(lam)
    return z[:, :k], ratio[:k]


_GAUSSIANS = ("diagonal", "spherical")


@functools.partial(jax.jit, static_argnames=("num_classes", "gaussian", "pca_dim"))
def _gbc_core(f: Array, y: Array, num_classes: int, gaussian: str = "diagonal", pca_dim: int | None = 64) -> Array:
    if pca_dim is not None and pca_dim < min(f.shape):
        f, _ = _pca(f, pca_dim)
    d = f.shape[1]
    onehot = jax.nn.one_hot(y, num_classes, dtype=f.dtype)
    counts, means, _ = _class_stats(f, y, num_classes)
    var = (onehot.T @ (f - means[y]) ** 2) / jnp.maximum(counts, 1.0)[:, None]
    var = jnp.maximum(var, 1e-4)  # as the reference: constant features would give log(0)
    if gaussian == "spherical":
        var = jnp.broadcast_to(jnp.mean(var, axis=1, keepdims=True), var.shape)
    avg = 0.5 * (var[:, None, :] + var[None, :, :])  # [C, C, D]
    diff2 = (means[:, None, :] - means[None, :, :]) ** 2
    logv = jnp.log(var)
    db = jnp.sum(diff2 / avg, axis=-1) / 8.0 + 0.5 * (
        jnp.sum(jnp.log(avg), axis=-1) - 0.5 * jnp.sum(logv, 1)[:, None] - 0.5 * jnp.sum(logv, 1)[None, :]
    )
    present = counts > 0
    pair = present[:, None] & present[None, :] & ~jnp.eye(num_classes, dtype=bool)
    del d
    return -jnp.sum(jnp.where(pair, jnp.exp(-db), 0.0))


def gbc(
    features: Float[Array, "n d"],
    labels: Int[Array, " n"],
    *,
    gaussian: str = "diagonal",
    pca_dim: int | None = 64,
    num_classes: int | None = None,
) -> Float[Array, ""]:
    """GBC: minus the summed Bhattacharyya coefficients between per-class Gaussians of the features.

    Each class ``c`` is ``N(mu_c, diag(sigma_c^2))`` (population variance, floored at ``1e-4``) in
    the top ``pca_dim`` principal components of the features;

    .. math::
        D_B(c, c') = \\tfrac18 \\sum_k \\frac{(\\mu_{ck}-\\mu_{c'k})^2}{\\bar\\sigma_k}
        + \\tfrac12 \\sum_k \\log\\frac{\\bar\\sigma_k}{\\sqrt{\\sigma_{ck}\\sigma_{c'k}}},\\quad
        \\mathrm{GBC} = -\\sum_{c \\ne c'} e^{-D_B(c, c')} \\in [-C(C-1), 0].

    Covariance variant: Google's diagonal (default) or spherical Gaussians (Pándy et al.), not
    Model Spider's full covariance with pinv/det (which leaves the bound on real data). The
    spherical variant uses ``sigma_c = mean_k sigma_ck`` in every one of the ``D`` dimensions (the
    log-determinant term is counted ``D`` times, unlike the reference, which counts it once).

    Args:
        features: ``[N, D]`` target features.
        labels: ``[N]`` target classes.
        gaussian: ``"diagonal"`` or ``"spherical"``.
        pca_dim: principal components kept first (``None`` keeps the raw features).
        num_classes: number of classes (default ``max(labels) + 1``).

    Returns:
        Scalar GBC in ``[-C(C-1), 0]`` (0 for perfectly separated classes).

    Example:
        >>> import numpy as np
        >>> from weightspace.selection import gbc
        >>> rng = np.random.default_rng(0)
        >>> y = np.arange(60) % 3
        >>> abs(float(gbc(rng.standard_normal((60, 4)) + 100.0 * y[:, None], y))) < 1e-6
        True

    References:
        Pándy et al., "Transferability Estimation using Bhattacharyya Class Separability", CVPR 2022.
    """
    if gaussian not in _GAUSSIANS:
        raise InvalidValueError(f"gbc gaussian must be one of {_GAUSSIANS}, got {gaussian!r}")
    f = as_float_array(features, "features")
    y, c = as_labels(labels, f.shape[0], num_classes=num_classes)
    return _gbc_core(f, y, num_classes=c, gaussian=gaussian, pca_dim=pca_dim)


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _lfc_core(f: Array, y: Array, num_classes: int) -> Array:
    n, d = f.shape
    fc = f - jnp.mean(f, axis=0)
    onehot = jax.nn.one_hot(y, num_classes, dtype=f.dtype)
    oc = onehot - jnp.mean(onehot, axis=0)
    num = jnp.sum((fc.T @ oc) ** 2)
    gf = fc @ fc.T if n < d else fc.T @ fc
    return num / (jnp.sqrt(jnp.sum(gf**2)) * jnp.sqrt(jnp.sum((oc.T @ oc) ** 2)))


def lfc(features: Float[Array, "n d"], labels: Int[Array, " n"], *, num_classes: int | None = None) -> Float[Array, ""]:
    """LFC: centred kernel alignment between the feature kernel ``F F^T`` and the label-agreement kernel.

    With ``H = I - 11^T/N``, ``K_F = F F^T`` and ``K_Y[i, j] = +1`` if ``y_i = y_j`` else ``-1``,

    .. math::
        \\mathrm{LFC} = \\frac{\\langle H K_F H, H K_Y H\\rangle_F}{\\lVert H K_F H\\rVert_F\\,\\lVert H K_Y H\\rVert_F}
        = \\frac{\\lVert F_c^\\top Y_c\\rVert_F^2}{\\lVert F_c^\\top F_c\\rVert_F \\lVert Y_c^\\top Y_c\\rVert_F},

    computed without the ``N x N`` kernels (``Y_c``: centred one-hot labels).

    Args:
        features: ``[N, D]`` target features.
        labels: ``[N]`` target classes.
        num_classes: number of classes (default ``max(labels) + 1``).

    Returns:
        Scalar LFC in ``[0, 1]``.

    Example:
        >>> import numpy as np
        >>> from weightspace.selection import lfc
        >>> y = np.arange(10) % 2
        >>> round(float(lfc(np.eye(2)[y], y)), 6)
        1.0

    References:
        Deshpande et al., "A linearized framework and a new benchmark for model selection for
        fine-tuning", arXiv 2102.00084.
    """
    f = as_float_array(features, "features")
    y, c = as_labels(labels, f.shape[0], num_classes=num_classes)
    return _lfc_core(f, y, num_classes=c)


@functools.partial(jax.jit, static_argnames=("num_classes", "components", "max_dim", "max_iter"))
def _nleep_core(
    f: Array,
    y: Array,
    key: Array,
    num_classes: int,
    components: int,
    variance: float = 0.8,
    max_dim: int | None = None,
    max_iter: int = 100,
    tol: float = 1e-3,
) -> Array:
    k = min(f.shape) if max_dim is None else min(max_dim, *f.shape)
    z, ratio = _pca(f, k)
    # Keep the components up to `variance` explained (sklearn's PCA(n_components=0.8) rule) by
    # zeroing the rest: a zero column adds the same term to every diagonal-Gaussian component, so
    # the posteriors equal those of the truncated features while the shapes stay static.
    ncomp = jnp.searchsorted(jnp.cumsum(ratio), variance, side="right") + 1
    z = jnp.where(jnp.arange(k)[None, :] < ncomp, z, 0.0)
    params = fit_gmm(z, components, key=key, max_iter=max_iter, tol=tol)
    post = gmm_posterior(z, params)
    return _leep_core(post, y, num_classes=num_classes)


def nleep(
    features: Float[Array, "n d"],
    labels: Int[Array, " n"],
    *,
    key: Array | None = None,
    components: int | None = None,
    variance: float = 0.8,
    max_dim: int | None = None,
    max_iter: int = 100,
    tol: float = 1e-3,
    num_classes: int | None = None,
) -> Float[Array, ""]:
    """N-LEEP: LEEP on the posteriors of a Gaussian mixture fitted to PCA-reduced features.

    Features are projected on the principal components explaining ``variance`` of the variance;
    a diagonal-covariance GMM with ``components`` components (default: the number of target
    classes) is fitted by EM (:func:`fit_gmm`, seeded by ``key``); its posteriors play the role of
    the source-class probabilities ``theta`` in :func:`leep`.

    Args:
        features: ``[N, D]`` target features.
        labels: ``[N]`` target classes.
        key: ``jax.random.key`` seeding the mixture initialisation (default ``key(0)``).
        components: mixture components (default ``num_classes``).
        variance: explained-variance fraction kept by PCA.
        max_dim: cap on the PCA dimensions computed (static; default ``min(N, D)``).
        max_iter, tol: EM stopping rule (as scikit-learn's ``GaussianMixture``).
        num_classes: number of classes (default ``max(labels) + 1``).

    Returns:
        Scalar N-LEEP (``<= 0``).

    Example:
        >>> import numpy as np, jax
        >>> from weightspace.selection import nleep
        >>> rng = np.random.default_rng(0)
        >>> y = np.arange(90) % 3
        >>> f = rng.standard_normal((90, 4)) + 10.0 * np.eye(4)[y]
        >>> float(nleep(f, y, key=jax.random.key(0))) > -0.1
        True

    References:
        Li et al., "Ranking Neural Checkpoints", CVPR 2021.
    """
    f = as_float_array(features, "features")
    y, c = as_labels(labels, f.shape[0], num_classes=num_classes)
    key = jax.random.key(0) if key is None else key
    return _nleep_core(
        f,
        y,
        key,
        num_classes=c,
        components=components or c,
        variance=variance,
        max_dim=max_dim,
        max_iter=max_iter,
        tol=tol,
    )
