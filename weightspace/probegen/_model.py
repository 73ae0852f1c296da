"""ProbeGen modules (Flax NNX): probe sources (deep linear generator, free probes, fixed probes) and
the predictor that reads a model's flattened responses."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from jaxtyping import Array, Float

from weightspace._errors import ConfigError, ShapeError
from weightspace.learn import MLP, Task, as_task
from weightspace.nets import Architecture
from weightspace.probing import apply_models

PROBE_SOURCES = ("generator", "vanilla", "fixed")
"""How a :class:`ProbeGen` gets its probes: a shared generator of learned latent codes (ProbeGen),
free learned probes (the "vanilla probing" baseline), or a fixed probe set."""


@dataclasses.dataclass(frozen=True)
class ProbeGenConfig:
    """What a ProbeGen model is and predicts (optimisation is a :class:`~weightspace.learn.TrainConfig`).

    Attributes:
        task: a :class:`~weightspace.learn.Task` kind: ``classify`` (e.g. the class of the image
            an INR represents), ``rank`` (e.g. a classifier's held-out accuracy, scored by
            Kendall tau), ``regress`` or ``multilabel``.
        probes: one of :data:`PROBE_SOURCES`.
        n_probes: number of probes (paper: 64 or 128).
        latent_dim: dimension of the latent codes (paper: 32).
        nonlinear: activations inside the generator (ablation; the paper's generator is linear).
        bounded: coordinate probes end in ``tanh`` (inside an INR's ``[-1, 1]^d`` domain).
        fixed: the probe kind of ``probes="fixed"`` (see
            :func:`~weightspace.probegen.fixed_probe_data`; ``None``: probes given as an array).
        depth: predictor layers (paper: 6).
        width: predictor width (paper: 256).

    Example:
        >>> cfg = ProbeGenConfig(task="rank", n_probes=128)
        >>> ProbeGenConfig.from_dict(cfg.to_dict()) == cfg, cfg.task_spec.metric
        (True, 'kendall_tau')
    """

    task: str = "classify"
    probes: str = "generator"
    n_probes: int = 64
    latent_dim: int = 32
    nonlinear: bool = False
    bounded: bool = True
    fixed: str | None = None
    depth: int = 6
    width: int = 256

    def __post_init__(self) -> None:
        Task(self.task)  # raises ConfigError naming the known kinds
        if self.probes not in PROBE_SOURCES:
            raise ConfigError(f"ProbeGenConfig.probes must be one of {PROBE_SOURCES}, got {self.probes!r}")
        for name, low in (("n_probes", 1), ("latent_dim", 1), ("depth", 2), ("width", 1)):
            v = getattr(self, name)
            if not isinstance(v, int | np.integer) or isinstance(v, bool) or v < low:
                raise ConfigError(f"ProbeGenConfig.{name} must be an int >= {low}, got {v!r}")
        if self.fixed is not None and not isinstance(self.fixed, str):
            raise ConfigError(
                f"ProbeGenConfig.fixed must be a probe kind (str) or None, got {type(self.fixed).__name__}"
            )

    @property
    def task_spec(self) -> Task:
        """The :class:`~weightspace.learn.Task` of :attr:`task`."""
        return Task(self.task)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProbeGenConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"unknown ProbeGenConfig fields {unknown}")
        return cls(**d)


class ProbeData(nnx.Variable):  # type: ignore[type-arg]
    """Fixed probes: state of the module (saved with it) that the optimizer does not touch."""


def _is_image(arch: Architecture) -> bool:
    return len(arch.input_shape) == 3


def _image_range(x: Array) -> Array:
    """tanh, mapped onto the ``[0, 1]`` pixel range of weightspace's image probes."""
    return 0.5 * (jnp.tanh(x) + 1.0)


class ProbeGenerator(nnx.Module):
    """n learned latent codes -> a shared generator -> n probes.

    Coordinates (INRs): dense layers ``latent -> hidden... -> d_in``. Images ``(H, W, C)``:
    a dense layer to a ``ceil(H/4) x ceil(W/4)`` map, two stride-2 transposed convolutions
    (kernel 4), crop, then ``tanh`` mapped onto ``[0, 1]``. Coordinates end in ``tanh`` too when
    ``bounded`` (our default: an INR is only fitted on ``[-1, 1]^d``, and unbounded linear probes
    drift far outside it and overfit; the paper's two linear layers end unbounded:
    ``bounded=False``). With ``nonlinear=False`` (ProbeGen)
    no activation sits between the layers: the generator is a deep LINEAR map (its
    over-parameterisation is the inductive bias); ``nonlinear=True`` adds leaky-ReLUs (the ablation).

    Example:
        >>> from flax import nnx
        >>> from weightspace.nets import CNN, SIREN
        >>> ProbeGenerator(SIREN(), 64, rngs=nnx.Rngs(0))().shape
        (64, 2)
        >>> g = ProbeGenerator(CNN(image_shape=(28, 28, 1)), 8, rngs=nnx.Rngs(0))()
        >>> g.shape, bool(g.min() >= 0) and bool(g.max() <= 1)
        ((8, 28, 28, 1), True)
    """

    def __init__(
        self,
        arch: Architecture,
        n_probes: int,
        *,
        latent_dim: int = 32,
        nonlinear: bool = False,
        hidden: int = 32,
        channels: Sequence[int] = (32, 16),
        bounded: bool = True,
        rngs: nnx.Rngs,
    ) -> None:
        self.shape = tuple(arch.input_shape)
        self.nonlinear = bool(nonlinear)
        self.bounded = bool(bounded)
        self.latents = nnx.Param(jax.random.normal(rngs.params(), (n_probes, latent_dim), jnp.float32))
        if _is_image(arch):
            h, w, c = self.shape
            self.base = (math.ceil(h / 4), math.ceil(w / 4))
            c0, c1 = (int(x) for x in channels)
            self.dense = nnx.List([nnx.Linear(latent_dim, c0 * self.base[0] * self.base[1], rngs=rngs)])
            self.deconvs = nnx.List(
                [
                    nnx.ConvTranspose(c0, c1, (4, 4), strides=(2, 2), padding="SAME", rngs=rngs),
                    nnx.ConvTranspose(c1, c, (4, 4), strides=(2, 2), padding="SAME", rngs=rngs),
                ]
            )
            self.c0 = c0
        elif len(self.shape) == 1:
            self.dense = nnx.List(
                [nnx.Linear(latent_dim, hidden, rngs=rngs), nnx.Linear(hidden, self.shape[0], rngs=rngs)]
            )
            self.deconvs = nnx.List([])
        else:
            raise ConfigError(
                f"ProbeGenerator: no generator for inputs of shape {self.shape} "
                f"(vectors/coordinates [d] and images [H, W, C] are supported)"
            )

    def _act(self, x: Array) -> Array:
        return jax.nn.leaky_relu(x, 0.2) if self.nonlinear else x

    def __call__(self) -> Float[Array, "probes ..."]:
        z = self.latents[...]
        for i, layer in enumerate(self.dense):
            z = layer(z)
            if i < len(self.dense) - 1 or len(self.deconvs):
                z = self._act(z)
        if not len(self.deconvs):
            return jnp.tanh(z) if self.bounded else z
        h, w, _ = self.shape
        z = z.reshape(z.shape[0], self.base[0], self.base[1], self.c0)
        for i, deconv in enumerate(self.deconvs):
            z = deconv(z)
            if i < len(self.deconvs) - 1:
                z = self._act(z)
        return _image_range(z[:, :h, :w, :])


class LearnedProbes(nnx.Module):
    """Free learned probes, one parameter tensor per probe (vanilla probing, no generator).

    Images start uniform in ``[0, 1]``; coordinates uniform in ``[-1, 1]``.
    """

    def __init__(self, arch: Architecture, n_probes: int, *, rngs: nnx.Rngs) -> None:
        lo = 0.0 if _is_image(arch) else -1.0
        self.data = nnx.Param(jax.random.uniform(rngs.params(), (n_probes, *arch.input_shape), jnp.float32, lo, 1.0))

    def __call__(self) -> Float[Array, "probes ..."]:
        return self.data[...]


class FixedProbes(nnx.Module):
    """A fixed probe set (uniform noise, dead leaves, natural crops, in-distribution samples...)."""

    def __init__(self, data: np.ndarray | Array) -> None:
        self.data = ProbeData(jnp.asarray(data, jnp.float32))

    def __call__(self) -> Float[Array, "probes ..."]:
        return jax.lax.stop_gradient(self.data[...])


class ProbeGen(nnx.Module):
    """ProbeGen (Kahana et al., ICLR 2025): probes -> frozen models -> flattened responses -> MLP.

    .. math:: \\hat y(f) = \\mathrm{MLP}\\big(\\mathrm{vec}[f(G(z_1)), \\ldots, f(G(z_n))]\\big)

    with learned latents ``z_i`` and a shared deep linear generator ``G`` (``probes="generator"``),
    free learned probes (``"vanilla"``) or a fixed probe set (``"fixed"``, give ``fixed=``). The
    models' responses come from :func:`weightspace.probing.apply_models` (the probe engine's
    kernel), so gradients flow through the frozen models into the generator. Several
    architectures with one input shape and output count (e.g. the ReLU and tanh zoos of the
    Small CNN Zoo) share one set of probes; ``arch_index`` picks the one a batch runs.

    Args:
        archs: the target architecture(s).
        n_out: predictor outputs (classes, or 1 for regression).
        task: the :class:`~weightspace.learn.Task` it is trained for (read by its training loss).
        n_probes: number of probes (paper: 64 or 128).
        probes: one of :data:`PROBE_SOURCES`.
        latent_dim: dimension of the latent codes (paper: 32).
        nonlinear: activations inside the generator (ablation; the paper's generator is linear).
        bounded: coordinate probes end in ``tanh`` (inside an INR's ``[-1, 1]^d`` domain).
        fixed: ``[n_probes, ...]`` probes for ``probes="fixed"``.
        depth: predictor layers (paper: 6).
        width: predictor width (paper: 256).
        mesh: shard the models of every batch over this mesh's ``models`` axis.
        rngs: NNX random streams.

    Example:
        >>> import jax
        >>> from flax import nnx
        >>> from weightspace.nets import SIREN
        >>> from weightspace.zoo import Zoo
        >>> zoo = Zoo.init(SIREN(), 5, key=jax.random.key(0))
        >>> model = ProbeGen([zoo.arch], n_out=10, n_probes=16, rngs=nnx.Rngs(0))
        >>> model.probes().shape, model(zoo.params).shape, model.embed(zoo.params).shape
        ((16, 2), (5, 10), (5, 256))
    """

    def __init__(
        self,
        archs: Sequence[Architecture],
        *,
        n_out: int,
        n_probes: int = 64,
        probes: str = "generator",
        latent_dim: int = 32,
        nonlinear: bool = False,
        bounded: bool = True,
        fixed: np.ndarray | Array | None = None,
        depth: int = 6,
        width: int = 256,
        task: Task | str = "classify",
        mesh: Mesh | None = None,
        rngs: nnx.Rngs,
    ) -> None:
        archs = tuple(archs)
        if not archs or not all(isinstance(a, Architecture) for a in archs):
            raise ConfigError(f"ProbeGen needs one or more Architectures, got {archs!r}")
        a0 = archs[0]
        for a in archs[1:]:
            if a.input_shape != a0.input_shape or a.num_outputs != a0.num_outputs:
                raise ConfigError(
                    f"ProbeGen: every architecture must share input shape and outputs; "
                    f"{a0.input_shape}->{a0.num_outputs} vs {a.input_shape}->{a.num_outputs}"
                )
        if probes not in PROBE_SOURCES:
            raise ConfigError(f"ProbeGen: probes must be one of {PROBE_SOURCES}, got {probes!r}")
        self.archs = archs
        self.n_probes = int(n_probes)
        self.kind = probes
        # static (graph definition): the training loss reads both, equal values share one compiled step
        self.task = as_task(task)
        self.mesh = mesh
        if probes == "generator":
            self.source: nnx.Module = ProbeGenerator(
                a0, n_probes, latent_dim=latent_dim, nonlinear=nonlinear, bounded=bounded, rngs=rngs
            )
        elif probes == "vanilla":
            self.source = LearnedProbes(a0, n_probes, rngs=rngs)
        else:
            if fixed is None:
                raise ConfigError("ProbeGen(probes='fixed') needs fixed=[n_probes, ...] probe data")
            fixed = np.asarray(fixed, np.float32)
            if fixed.shape[0] != n_probes:
                raise ShapeError(f"ProbeGen: fixed probes have {fixed.shape[0]} rows, n_probes={n_probes}")
            a0.adapt(jnp.asarray(fixed[:1]))  # raises ShapeError when they do not fit the input
            self.source = FixedProbes(fixed)
        self.scale = ProbeData(jnp.ones((), jnp.float32))
        self.predictor = MLP(n_probes * a0.num_outputs, (width,) * (depth - 1), n_out, rngs=rngs)

    def probes(self) -> Float[Array, "probes ..."]:
        """The current probes (before ``arch.adapt``)."""
        return self.source()

    def responses(
        self,
        params: Any,
        *,
        arch_index: int | Array = 0,
        mesh: Mesh | None = None,
        formulation: str | None = None,
    ) -> Float[Array, "models probes logits"]:
        """Responses of a batch of models (params stacked on axis 0) to the probes
        (:func:`~weightspace.probing.apply_models`; ``formulation="vmap"`` for FLOP counts)."""
        x = self.probes()

        def run(a: Architecture, p: Any, x: Array) -> Array:
            return apply_models(a, p, x, mesh=mesh, formulation=formulation)

        if len(self.archs) == 1:
            return run(self.archs[0], params, x)
        if isinstance(arch_index, int):
            return run(self.archs[arch_index], params, x)
        branches = [functools.partial(run, a) for a in self.archs]
        return jax.lax.switch(arch_index, branches, params, x)

    def features(self, params: Any, **kw: Any) -> Array:
        """Flattened responses, divided by the fixed response scale (see :meth:`calibrate`)."""
        r = self.responses(params, **kw)
        return r.reshape(r.shape[0], -1) / self.scale[...]

    def embed(self, params: Any, **kw: Any) -> Array:
        """The predictor's last hidden layer ``[models, width]``: a model embedding
        (keyword arguments as :meth:`responses`)."""
        return self.predictor.embed(self.features(params, **kw))

    def __call__(self, params: Any, **kw: Any) -> Array:
        """Predictor outputs ``[models, n_out]`` (keyword arguments as :meth:`responses`)."""
        return self.predictor(self.features(params, **kw))

    def calibrate(self, params: Any, *, arch_index: int = 0) -> None:
        """Set the fixed response scale to the RMS response of these (training) models."""
        r = self.responses(params, arch_index=arch_index)
        self.scale[...] = jnp.maximum(jnp.sqrt(jnp.mean(jnp.square(r))), 1e-6)


def build_probegen(
    config: ProbeGenConfig,
    archs: Sequence[Architecture],
    *,
    n_out: int,
    fixed: np.ndarray | None = None,
    mesh: Mesh | None = None,
    seed: int = 0,
) -> ProbeGen:
    """A :class:`ProbeGen` as ``config`` describes it, for ``archs`` and ``n_out`` outputs.

    For ``probes="fixed"`` without ``fixed``, zero probes hold the place of the saved ones
    (``load_module`` restores them from the saved state).
    """
    if config.probes == "fixed" and fixed is None:
        fixed = np.zeros((config.n_probes, *archs[0].input_shape), np.float32)
    return ProbeGen(
        archs,
        n_out=int(n_out),
        n_probes=config.n_probes,
        probes=config.probes,
        latent_dim=config.latent_dim,
        nonlinear=config.nonlinear,
        bounded=config.bounded,
        fixed=fixed,
        depth=config.depth,
        width=config.width,
        task=config.task,
        mesh=mesh,
        rngs=nnx.Rngs(seed),
    )
