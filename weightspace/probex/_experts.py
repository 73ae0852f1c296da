"""Training ProbeX experts (ensembles of seeds in one vmapped program) on ``weightspace.learn.fit``."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jaxtyping import Float

from weightspace._atomic import atomic_path
from weightspace._errors import ConfigError, InvalidValueError, LoadError, ShapeError
from weightspace.probex._model import ProbeX, ProbeXConfig, ProbeXSpec, zero_shot_logits
from weightspace.train import TrainConfig

EXPERT_FORMAT = "probex-expert/1"

DEFAULT_CONFIG = ProbeXConfig()
"""The paper's method: r_U = r_V = 128, r_T = 512, the ``classes`` readout."""

DEFAULT_TRAIN = TrainConfig(steps=600, batch_size=128, learning_rate=1e-3, weight_decay=1e-5, eval_every=50, patience=6)
"""The paper's optimiser (Adam 1e-3, weight decay 1e-5, batch 128) with early stopping on validation."""

SWEEP_TRAIN = DEFAULT_TRAIN.replace(steps=300)
"""The shorter training of the per-layer experts of a layer sweep."""


def multi_hot(class_lists: Sequence[Sequence[int]], n_classes: int) -> np.ndarray:
    """``[models, n_classes]`` float32 targets from per-model class-index lists.

    Example:
        >>> multi_hot([[0, 2], [1]], 3).tolist()
        [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    """
    y = np.zeros((len(class_lists), n_classes), np.float32)
    for i, cl in enumerate(class_lists):
        for c in cl:
            if not 0 <= int(c) < n_classes:
                raise InvalidValueError(f"model {i}: class index {c} outside 0..{n_classes - 1}")
            y[i, int(c)] = 1.0
    return y


def make_ensemble(config: ProbeXSpec, members: int, *, seed: int = 0) -> ProbeX:
    """``members`` ProbeX experts stacked on a leading axis (one vmapped module), member ``i``
    initialised from ``split(key(seed), members)[i]``.

    Example:
        >>> m = make_ensemble(ProbeXSpec(8, 6, 3, ProbeXConfig(r_u=4, r_v=5, r_t=7)), 3)
        >>> m.probes[...].shape
        (3, 6, 4)
    """
    if not isinstance(members, int) or members < 1:
        raise ConfigError(f"members must be a positive int, got {members!r}")

    @nnx.split_rngs(splits=members)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def create(rngs: nnx.Rngs) -> ProbeX:
        return ProbeX(config, rngs=rngs)

    return create(nnx.Rngs(seed))


def _members(model: ProbeX, x: jax.Array, fn: str) -> jax.Array:
    graphdef, state = nnx.split(model)
    if all(a.shape[0] == 1 for a in jax.tree.leaves(state)):
        # One member: call the plain module. XLA keeps a size-1 vmap axis as a batch dimension of
        # every dot, and those batched dots (forward and backward) cost ~30% of a training step.
        one = nnx.merge(graphdef, jax.tree.map(lambda a: a[0], state))
        return getattr(one, fn)(x)[None]
    return nnx.vmap(lambda m, xx: getattr(m, fn)(xx), in_axes=(0, None))(model, x)


def _classes_loss(model: ProbeX, batch: Mapping[str, jax.Array], key: jax.Array) -> tuple[jax.Array, dict]:
    logits = _members(model, batch["x"], "__call__")  # [members, b, classes]
    per = optax.sigmoid_binary_cross_entropy(logits, batch["y"][None]).mean(axis=(1, 2))
    return per.sum(), {"bce": per.mean()}


def _zero_shot_loss(model: ProbeX, batch: Mapping[str, jax.Array], key: jax.Array) -> tuple[jax.Array, dict]:
    # batch["text"]: the training classes' text embeddings, shared by every batch (fit's shared=).
    out = _members(model, batch["x"], "__call__")  # [members, b, d_text]
    logits = zero_shot_logits(out, batch["text"], temperature=model.spec.temperature)
    target = batch["y"] / jnp.maximum(batch["y"].sum(-1, keepdims=True), 1.0)
    per = optax.softmax_cross_entropy(logits, target[None]).mean(axis=1)
    return per.sum(), {"ce": per.mean()}


@functools.partial(jax.jit, static_argnames=("fn",))
def _apply_jit(graphdef: Any, state: Any, x: jax.Array, *, fn: str) -> jax.Array:
    return _members(nnx.merge(graphdef, state), x, fn)


def _apply(model: ProbeX, x: np.ndarray, fn: str, chunk: int = 512) -> np.ndarray:
    from weightspace.parallel import map_chunks

    graphdef, state = nnx.split(model)
    # [members, models, ...]: the models are axis 1 of the output; every chunk has one shape
    return map_chunks(lambda part: _apply_jit(graphdef, state, jnp.asarray(part), fn=fn), x, chunk=chunk, out_axis=1)


@dataclasses.dataclass
class Expert:
    """A trained ProbeX expert (an ensemble of ``members`` seeds) for one layer of one tree.

    Attributes:
        module: the (vmapped) :class:`ProbeX` ensemble.
        spec: its :class:`ProbeXSpec` (the method's :class:`ProbeXConfig` on the layer's shape).
        layer: the layer it reads.
        classes: names of the classes it was trained on (``classes``: its outputs, in order;
            ``zero-shot``: the training classes whose prompts it was aligned with).
        members: ensemble size (seeds).
        tree: the tree it serves (``None``: any).
        info: training report, held-out classes, splits, metrics (JSON-ready).
    """

    module: ProbeX
    spec: ProbeXSpec
    layer: str
    classes: list[str]
    members: int
    tree: str | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def readout(self) -> str:
        return self.spec.readout

    def _check(self, x: np.ndarray, ids: Sequence[str] | None = None) -> np.ndarray:
        from weightspace.probex._layers import check_layer

        x = np.asarray(x)
        ids = list(ids) if ids is not None else [f"model[{i}]" for i in range(len(x))]
        return check_layer(
            x,
            ids,
            layer=self.layer,
            expect=(self.spec.d_h, self.spec.d_w),
            where=f"expert for {self.tree or 'all trees'}",
        )

    def represent(
        self, x: Float[np.ndarray, "models d_h d_w"], *, ids: Sequence[str] | None = None
    ) -> Float[np.ndarray, "members models r_t"]:
        """The representations ``e`` of every member."""
        return _apply(self.module, self._check(x, ids), "represent")

    def outputs(self, x: Float[np.ndarray, "models d_h d_w"], *, ids: Sequence[str] | None = None) -> np.ndarray:
        """Raw head outputs ``[members, models, n_out]``."""
        return _apply(self.module, self._check(x, ids), "__call__")

    def scores(
        self,
        x: Float[np.ndarray, "models d_h d_w"],
        class_names: Sequence[str] | None = None,
        *,
        ids: Sequence[str] | None = None,
        text: np.ndarray | None = None,
    ) -> np.ndarray:
        """Per-member class scores ``[members, models, classes]``: logits (``classes``) or
        temperature-scaled cosines to the class prompts (``zero-shot``; any class names, seen or not).

        Args:
            x: layers ``[models, d_H, d_W]``.
            class_names: zero-shot: the candidate classes (default: the training classes).
            text: zero-shot: their embeddings ``[classes, d]`` (default: MiniLM prompt embeddings).
        """
        out = self.outputs(x, ids=ids)
        if self.readout == "classes":
            return out
        if text is None:
            from weightspace.probex._text import class_embeddings

            text = class_embeddings(list(class_names) if class_names is not None else self.classes)
        return np.asarray(
            zero_shot_logits(jnp.asarray(out), jnp.asarray(text, jnp.float32), temperature=self.spec.temperature)
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the expert to a directory (module via :func:`weightspace.learn.save_module` + ``expert.json``)."""
        from weightspace.learn import save_module

        path = Path(path)
        save_module(self.module, path / "module", config={"probex": self.spec.to_dict(), "members": self.members})
        meta = {
            "weightspace": EXPERT_FORMAT,
            "config": self.spec.to_dict(),
            "layer": self.layer,
            "classes": self.classes,
            "members": self.members,
            "tree": self.tree,
            "info": self.info,
        }
        with atomic_path(path / "expert.json") as tmp:
            tmp.write_text(json.dumps(meta, indent=1, default=_json_default))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, expect: Mapping[str, Any] | None = None) -> Expert:
        """Read an expert written by :meth:`save`.

        Args:
            expect: config fields the expert must have (e.g. ``{"readout": "classes"}``); a
                checkpoint of another config raises :class:`~weightspace.ConfigError`.
        """
        from weightspace.learn import load_module

        path = Path(path)
        try:
            meta = json.loads((path / "expert.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise LoadError(f"{path}: not a ProbeX expert directory (expert.json unreadable: {e})") from e
        if meta.get("weightspace") != EXPERT_FORMAT:
            raise LoadError(f"{path}/expert.json: not a ProbeX expert (format {meta.get('weightspace')!r})")
        spec = ProbeXSpec.from_dict(meta["config"])
        for k, v in (expect or {}).items():
            if getattr(spec, k) != v:
                raise ConfigError(f"{path}: the checkpoint has {k}={getattr(spec, k)!r}, expected {v!r}")
        members = int(meta["members"])

        def build(c: dict[str, Any]) -> nnx.Module:
            cfg = ProbeXSpec.from_dict(c["probex"])
            if cfg != spec or int(c["members"]) != members:
                raise ConfigError(f"{path}: module config {c} does not match expert.json ({spec}, {members})")
            return make_ensemble(cfg, int(c["members"]))

        module = cast(ProbeX, load_module(path / "module", build))
        return cls(
            module,
            spec,
            meta["layer"],
            list(meta["classes"]),
            members,
            meta.get("tree"),  # type: ignore[arg-type]
            meta.get("info", {}),
        )


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def train_expert(
    x: Float[np.ndarray, "models d_h d_w"],
    y: Float[np.ndarray, "models classes"],
    *,
    class_names: Sequence[str],
    train_idx: np.ndarray,
    val_idx: np.ndarray | None = None,
    config: ProbeXConfig = DEFAULT_CONFIG,
    layer: str = "layer",
    tree: str | None = None,
    members: int = 1,
    held_out: Sequence[str] = (),
    text: np.ndarray | None = None,
    train_config: TrainConfig = DEFAULT_TRAIN,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    mesh: Any | None = None,
) -> tuple[Expert, Any]:
    """Train a ProbeX expert (``members`` seeds in one vmapped program) with :func:`weightspace.learn.fit`.

    ``classes`` minimises the binary cross-entropy of every class; ``zero-shot`` maps the
    representation into the text space and minimises the cross-entropy of the cosine logits
    against the prompts of the training classes (the model's classes share the target mass).
    Classes in ``held_out`` never appear in training (zero-shot: they are dropped from the
    targets and models left without a training class are skipped). Early stopping keeps the
    state with the best mean validation mAP over the members (validation split only).

    Args:
        x: the layer of every model ``[models, d_H, d_W]``.
        y: multi-hot targets ``[models, classes]`` (columns named by ``class_names``).
        class_names: the class of every column.
        train_idx, val_idx: model indices of the training and validation splits.
        config: the method (:class:`~weightspace.probex.ProbeXConfig`: the widths r_U, r_V, r_T,
            paper defaults 128, 128, 512, and the readout, ``"classes"`` or ``"zero-shot"``).
        layer, tree: recorded in the expert.
        members: seeds trained at once (member ``i`` initialised from seed ``seed``'s ``i``-th split).
        held_out: class names excluded from training (zero-shot evaluation).
        text: ``[classes, d]`` text embeddings of ``class_names`` (default: MiniLM prompts).
        train_config: the optimisation (default :data:`DEFAULT_TRAIN`, the paper's); its ``seed``
            seeds the members' initialisation and the batch order.
        checkpoint_dir, progress, mesh: passed to :func:`weightspace.learn.fit`.

    Returns:
        ``(expert, fit report)``.
    """
    from weightspace.learn import Task, fit
    from weightspace.probex._layers import check_layer

    if not isinstance(config, ProbeXConfig):
        raise ConfigError(f"train_expert: config must be a ProbeXConfig, got {type(config).__name__}")
    readout = config.readout
    if not isinstance(train_config, TrainConfig):
        raise ConfigError(f"train_expert: train_config must be a TrainConfig, got {type(train_config).__name__}")
    task = Task("multilabel")  # a model's class set, whichever readout
    x = check_layer(x, [str(i) for i in range(len(x))], layer=layer)
    y = np.asarray(y, np.float32)
    class_names = list(class_names)
    if y.shape != (len(x), len(class_names)):
        raise ShapeError(f"targets are {y.shape}, expected [{len(x)}, {len(class_names)}] (models x classes)")
    unknown = sorted(set(held_out) - set(class_names))
    if unknown:
        raise InvalidValueError(f"held-out classes {unknown} are not among the classes {class_names}")
    train_idx = np.asarray(train_idx)
    keep_cols = [i for i, c in enumerate(class_names) if c not in set(held_out)]
    seen = [class_names[i] for i in keep_cols]
    y_seen = y[:, keep_cols]
    if readout == "zero-shot":
        train_idx = train_idx[y_seen[train_idx].sum(1) > 0]
    if len(train_idx) < 2:
        raise InvalidValueError(f"only {len(train_idx)} training models (need >= 2)")
    scale = float(x[train_idx].std()) or 1.0
    d_text = 0
    if readout == "zero-shot":
        if text is None:
            from weightspace.probex._text import class_embeddings

            text = class_embeddings(class_names)
        text = np.asarray(text, np.float32)
        if text.shape[0] != len(class_names):
            raise ShapeError(f"text embeddings are {text.shape}, expected one row per class ({len(class_names)})")
        d_text = text.shape[1]
    spec = ProbeXSpec(d_h=int(x.shape[1]), d_w=int(x.shape[2]), n_out=d_text or len(seen), method=config, x_scale=scale)
    tcfg = train_config
    model = make_ensemble(spec, members, seed=tcfg.seed)
    shared = None
    if readout == "classes":
        loss_fn: Callable[..., Any] = _classes_loss
    else:
        assert text is not None  # zero-shot always reads text embeddings (checked above)
        t_seen = np.ascontiguousarray(text[keep_cols])
        loss_fn, shared = _zero_shot_loss, {"text": t_seen}
    expert = Expert(model, spec, layer, seen, members, tree)

    val_fn = None
    if val_idx is not None and len(val_idx):
        xv, yv = x[np.asarray(val_idx)], y_seen[np.asarray(val_idx)]
        t_val = None if readout == "classes" else t_seen

        def val_fn(m: nnx.Module) -> float:
            expert.module = m  # type: ignore[assignment]
            s = expert.scores(xv, text=t_val)
            return float(np.mean([task.score(s_i, yv) for s_i in s]))

    report = fit(
        model,
        loss_fn,
        {"x": x[train_idx], "y": y_seen[train_idx]},
        config=tcfg,
        val_fn=val_fn,
        checkpoint_dir=checkpoint_dir,
        progress=progress,
        mesh=mesh,
        shared=shared,
    )
    expert.module = model
    expert.info = {
        "held_out": list(held_out),
        "train_models": len(train_idx),
        "steps_done": report.steps_done,
        "best_step": report.best_step,
        "best_val_map": report.best_score,
        "train_seconds": report.seconds,
        "compile_seconds": report.compile_seconds,
        "train_config": tcfg.to_dict(),
    }
    return expert, report
