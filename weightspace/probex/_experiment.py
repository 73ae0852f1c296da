"""The ProbeX experiment on ``fmnist-trees`` (and ``fmnist-lora``): experts vs baselines per tree,
zero-shot on held-out classes, routing, routed experts vs one expert for all, downstream on ``e``."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from weightspace.probex._experts import DEFAULT_TRAIN, train_expert
from weightspace.probex._layers import zoo_layer
from weightspace.probex._model import ProbeXConfig
from weightspace.probex._router import Router, routing_accuracy
from weightspace.probex._trees import layer_sweep, zoo_targets
from weightspace.train import TrainConfig

REDUCED = ProbeXConfig(r_u=32, r_v=32, r_t=128)
"""The experiments' default widths, a quarter of the paper's (``ProbeXConfig()``): the 2-core machine's budget."""

HELD_OUT = ("Sandal", "Bag", "digit 3", "digit 7")
"""Classes kept out of every zero-shot training label (2 Fashion-MNIST classes, 2 digits)."""


def _log(msg: str, verbose: bool) -> None:
    if verbose:
        print(f"[probex {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def zero_shot_metrics(scores: np.ndarray, y: np.ndarray, held: Sequence[int]) -> dict[str, float]:
    """Zero-shot scores of models on held-out classes.

    Args:
        scores: ``[models, classes]`` cosine logits over all classes.
        y: ``[models, classes]`` multi-hot truth.
        held: column indices of the held-out classes.

    Returns:
        ``zs_map`` (mAP over held-out classes), ``zs_acc`` (models with >= 1 held-out class: the
        top held-out class is one of theirs), ``zs_acc_chance``, ``ret_p1``/``ret_p5`` (text ->
        model retrieval: precision of the top 1/5 test models per held-out class name) and
        ``ret_chance`` (prevalence).

    Example:
        >>> s = np.array([[2.0, 0.0], [0.0, 2.0], [1.0, 0.5]]); y = np.array([[1, 0], [0, 1], [1, 0]], float)
        >>> zero_shot_metrics(s, y, [0, 1])["zs_acc"]
        1.0
    """
    from weightspace.learn import mean_average_precision

    held = list(held)
    s, t = scores[:, held], y[:, held]
    has = t.sum(1) > 0
    top = np.argmax(s, axis=1)
    acc = float(np.mean(t[has, top[has]])) if has.any() else float("nan")
    chance = float(np.mean(t[has].sum(1) / len(held))) if has.any() else float("nan")
    p1, p5 = [], []
    for j in range(len(held)):
        order = np.argsort(-s[:, j], kind="stable")
        p1.append(t[order[:1], j].mean())
        p5.append(t[order[:5], j].mean())
    return {
        "zs_map": float(mean_average_precision(s, t)),
        "zs_acc": acc,
        "zs_acc_chance": chance,
        "ret_p1": float(np.mean(p1)),
        "ret_p5": float(np.mean(p5)),
        "ret_chance": float(t.mean()),
    }


def downstream(e_train: np.ndarray, y_train: np.ndarray, e_test: np.ndarray, y_test: np.ndarray) -> dict[str, float]:
    """k-NN (per class, "trained on c?") mean accuracy and one-class (Mahalanobis, Ledoit-Wolf) AUC
    per class (inliers: test models trained on c; outliers: the others), averaged over classes."""
    from weightspace.learn import knn_classify, one_class_auc

    accs, aucs = [], []
    for c in range(y_train.shape[1]):
        pos_tr, pos_te = y_train[:, c] > 0, y_test[:, c] > 0
        if pos_tr.sum() < 3 or pos_te.sum() < 1 or (~pos_te).sum() < 1:
            continue
        pred = knn_classify(e_train, pos_tr.astype(np.int64), e_test, k=5)
        accs.append(np.mean(np.asarray(pred) == pos_te))
        aucs.append(one_class_auc(e_train[pos_tr], e_test[pos_te], e_test[~pos_te]))
    return {"knn_acc": float(np.mean(accs)), "occ_auc": float(np.mean(aucs))}


def _pad(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.pad(x, ((0, 0), (0, shape[0] - x.shape[1]), (0, shape[1] - x.shape[2])))


def run_trees(
    trees: Mapping[str, Any],
    *,
    class_names: Sequence[str],
    seeds: int = 3,
    config: ProbeXConfig = REDUCED,
    train_config: TrainConfig = DEFAULT_TRAIN,
    sweep_train_config: TrainConfig = DEFAULT_TRAIN,
    held_out: Sequence[str] = HELD_OUT,
    fresh: Mapping[str, Any] | None = None,
    baselines: Sequence[str] = ("flat-linear", "statnn-mlp", "flat-mlp"),
    cross: bool = True,
    on_stage: Callable[[dict[str, Any]], None] | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Run the whole experiment; returns ``{"table": ResultsTable, "sweep", "layers", "zero_shot",
    "routing", "timings"}``. Splits: :func:`weightspace.learn.split_models` seed 0 (70/15/15) per tree.
    ``on_stage(partial results)`` is called after every stage of every tree (save as you go).
    ``cross=False`` skips the parts that need every tree (routing, routed vs one expert): run them
    later with :func:`run_cross` on the experts of every tree."""
    from weightspace.learn import (
        ResultsTable,
        WeightDataset,
        exact_set_accuracy,
        mean_average_precision,
        run_baseline,
        split_models,
    )

    table = ResultsTable()
    out: dict[str, Any] = {"sweep": {}, "layers": {}, "timings": {}, "zero_shot": {}}
    held_idx = [list(class_names).index(c) for c in held_out]
    splits, xs, ys, experts = {}, {}, {}, {}
    for t, zoo in trees.items():
        t0 = time.perf_counter()
        rows = layer_sweep(
            zoo, class_names=class_names, members=1, config=config, train_config=sweep_train_config, progress=False
        )
        out["sweep"][t] = rows
        layer = next(r["layer"] for r in rows if r["best"])
        out["layers"][t] = layer
        _log(
            f"{t}: sweep {[(r['layer'], round(r['val_map'], 3)) for r in rows]} -> {layer} "
            f"({time.perf_counter() - t0:.0f} s)",
            verbose,
        )
        x, y = zoo_layer(zoo, layer), zoo_targets(zoo, class_names)
        sp = split_models(len(zoo), seed=0)
        splits[t], xs[t], ys[t] = sp, x, y
        # ProbeX, `seeds` members in one vmapped program
        t0 = time.perf_counter()
        e, rep = train_expert(
            x,
            y,
            class_names=class_names,
            train_idx=sp.train,
            val_idx=sp.val,
            layer=layer,
            tree=t,
            members=seeds,
            train_config=train_config,
            progress=False,
            config=config,
        )
        experts[t] = e
        out["timings"][f"{t}/probex"] = time.perf_counter() - t0
        st = e.scores(x[sp.test])
        emb_tr, emb_te = e.represent(x[sp.train]), e.represent(x[sp.test])
        for s in range(seeds):
            table.add("ProbeX", f"{t} mAP", mean_average_precision(st[s], y[sp.test]), seed=s)
            table.add("ProbeX", f"{t} exact", exact_set_accuracy(st[s], y[sp.test]), seed=s)
            d = downstream(emb_tr[s], y[sp.train], emb_te[s], y[sp.test])
            table.add("ProbeX e: k-NN", f"{t} class acc", d["knn_acc"], seed=s)
            table.add("ProbeX e: one-class", f"{t} AUC", d["occ_auc"], seed=s)
        _log(
            f"{t}: ProbeX mAP {np.mean([mean_average_precision(s_, y[sp.test]) for s_ in st]):.3f} "
            f"({rep.steps_done} steps, {time.perf_counter() - t0:.0f} s)",
            verbose,
        )
        if on_stage is not None:
            on_stage({**out, "table": table, "experts": experts})
        # zero-shot
        t0 = time.perf_counter()
        z, _ = train_expert(
            x,
            y,
            class_names=class_names,
            train_idx=sp.train,
            val_idx=sp.val,
            layer=layer,
            tree=t,
            config=config.replace(readout="zero-shot"),
            held_out=held_out,
            members=seeds,
            train_config=train_config,
            progress=False,
        )
        from weightspace.probex._text import class_embeddings

        text = class_embeddings(class_names)
        zs = z.scores(x[sp.test], text=text)
        per = [zero_shot_metrics(zs[s], y[sp.test], held_idx) for s in range(seeds)]
        for s, m in enumerate(per):
            for k, v in m.items():
                table.add("ProbeX zero-shot", f"{t} {k}", v, seed=s)
        out["zero_shot"][t] = {k: float(np.mean([m[k] for m in per])) for k in per[0]}
        out["timings"][f"{t}/zero-shot"] = time.perf_counter() - t0
        _log(f"{t}: zero-shot {out['zero_shot'][t]}", verbose)
        if on_stage is not None:
            on_stage({**out, "table": table, "experts": experts})
        # baselines through weightspace.learn
        for b in baselines:
            t0 = time.perf_counter()
            tensors = [layer] if b.startswith("flat") else None  # flat baselines read ProbeX's layer
            ds = WeightDataset.from_zoo(zoo, targets={"classes": y}, tensors=tensors, splits=sp)
            for s in range(seeds):
                pred = np.asarray(run_baseline(b, ds, target="classes", task="multilabel", seed=s))
                table.add(b, f"{t} mAP", mean_average_precision(pred, y[sp.test]), seed=s)
                table.add(b, f"{t} exact", exact_set_accuracy(pred, y[sp.test]), seed=s)
            out["timings"][f"{t}/{b}"] = time.perf_counter() - t0
            _log(f"{t}: {b} done ({time.perf_counter() - t0:.0f} s)", verbose)
            if on_stage is not None:
                on_stage({**out, "table": table, "experts": experts})
    out["table"] = table
    out["experts"] = experts
    out["splits"] = splits
    if cross:
        c = run_cross(
            trees,
            experts,
            class_names=class_names,
            seeds=seeds,
            config=config,
            train_config=train_config,
            fresh=fresh,
            verbose=verbose,
        )
        out["table"] = ResultsTable(table.rows + c["table"].rows)
        out["routing"] = c["routing"]
        out["timings"].update(c["timings"])
    return out


def run_cross(
    trees: Mapping[str, Any],
    experts: Mapping[str, Any],
    *,
    class_names: Sequence[str],
    seeds: int = 3,
    config: ProbeXConfig = REDUCED,
    train_config: TrainConfig = DEFAULT_TRAIN,
    fresh: Mapping[str, Any] | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Routing accuracy (test splits and fresh fine-tunes) and routed experts vs one expert for all
    trees (every tree's chosen layer zero-padded to one shape)."""
    from weightspace.learn import ResultsTable, exact_set_accuracy, mean_average_precision, split_models

    table = ResultsTable()
    out: dict[str, Any] = {"timings": {}}
    splits = {t: split_models(len(z), seed=0) for t, z in trees.items()}
    xs = {t: zoo_layer(z, experts[t].layer) for t, z in trees.items()}
    ys = {t: zoo_targets(z, class_names) for t, z in trees.items()}

    # routing: k-means on the training models of every tree; test split and fresh fine-tunes
    router = Router.fit({t: {k: np.asarray(v)[splits[t].train] for k, v in z.params.items()} for t, z in trees.items()})
    out["routing"] = {
        "test": routing_accuracy(
            router, {t: {k: np.asarray(v)[splits[t].test] for k, v in z.params.items()} for t, z in trees.items()}
        )
    }
    if fresh is not None:
        out["routing"]["fresh"] = routing_accuracy(router, {t: dict(z.params) for t, z in fresh.items()})
    _log(f"routing {out['routing']}", verbose)

    # routed experts vs one expert for all trees (layers zero-padded to one shape)
    shape = (max(x.shape[1] for x in xs.values()), max(x.shape[2] for x in xs.values()))
    x_all = np.concatenate([_pad(xs[t], shape) for t in trees])
    y_all = np.concatenate([ys[t] for t in trees])
    off = np.cumsum([0] + [len(xs[t]) for t in trees])
    tr_all = np.concatenate([splits[t].train + off[i] for i, t in enumerate(trees)])
    va_all = np.concatenate([splits[t].val + off[i] for i, t in enumerate(trees)])
    te_all = np.concatenate([splits[t].test + off[i] for i, t in enumerate(trees)])
    t0 = time.perf_counter()
    one, _ = train_expert(
        x_all,
        y_all,
        class_names=class_names,
        train_idx=tr_all,
        val_idx=va_all,
        layer="padded",
        members=seeds,
        train_config=train_config,
        progress=False,
        config=config,
    )
    out["timings"]["one-for-all"] = time.perf_counter() - t0
    s_one = one.scores(x_all[te_all])
    routed_scores = np.zeros((seeds, len(te_all), len(class_names)), np.float32)
    pos = 0
    for t, zoo in trees.items():
        test_params = {k: np.asarray(v)[splits[t].test] for k, v in zoo.params.items()}
        routes = router.route(test_params)
        for r_tree in set(routes):
            idx = np.flatnonzero(np.array(routes) == r_tree)
            layer = experts[r_tree].layer
            from weightspace.probex._layers import as_matrix

            xm = as_matrix(test_params[layer][idx]) if layer in test_params else None
            if xm is None or xm.shape[1:] != (experts[r_tree].spec.d_h, experts[r_tree].spec.d_w):
                routed_scores[:, pos + idx] = 0.0  # routed to a tree of another shape: no usable expert
                continue
            routed_scores[:, pos + idx] = experts[r_tree].scores(xm)
        pos += len(splits[t].test)
    for s in range(seeds):
        table.add("all trees: routed experts", "mAP", mean_average_precision(routed_scores[s], y_all[te_all]), seed=s)
        table.add("all trees: routed experts", "exact", exact_set_accuracy(routed_scores[s], y_all[te_all]), seed=s)
        table.add("all trees: one expert", "mAP", mean_average_precision(s_one[s], y_all[te_all]), seed=s)
        table.add("all trees: one expert", "exact", exact_set_accuracy(s_one[s], y_all[te_all]), seed=s)
    _log("one-for-all done", verbose)
    out["table"] = table
    return out


def run_lora(
    lora_zoo: Any,
    *,
    seeds: int = 3,
    config: ProbeXConfig = REDUCED,
    train_config: TrainConfig = DEFAULT_TRAIN,
    held_out: Sequence[str] = ("Sandal", "Bag"),
    layer: str | None = None,
    verbose: bool = True,
    table: Any | None = None,
    sweep_train_config: TrainConfig = DEFAULT_TRAIN,
) -> dict[str, Any]:
    """ProbeX on ``fmnist-lora`` (the layer is ``scale * B @ A``): the LoRA's Fashion-MNIST class
    (single label, 10 classes), downstream k-NN / one-class / retrieval on ``e``, zero-shot on
    held-out classes (when at least 6 classes occur). Random 70/15/15 split of the LoRAs."""
    from weightspace.learn import (
        ResultsTable,
        knn_classify,
        mean_average_precision,
        one_class_auc,
        retrieval_recall,
        split_models,
    )
    from weightspace.probex._layers import lora_layer
    from weightspace.probex._recipe import _FASHION

    table = table if table is not None else ResultsTable()
    names = list(_FASHION)
    labels = np.array([names.index(c) for c in lora_zoo.meta["class_name"]])
    y = np.eye(len(names), dtype=np.float32)[labels]
    # As in Model-J's LoRA subsets, many LoRAs share a concept; they are split at random (a concept
    # appears in several splits, with other images and dataset sizes).
    sp = split_models(len(labels), seed=0)
    rows = layer_sweep(
        lora_zoo,
        class_names=names,
        layers=None if layer is None else [layer],
        targets=y,
        members=1,
        config=config,
        train_config=sweep_train_config,
        progress=False,
    )
    out: dict[str, Any] = {"sweep": [{k: r[k] for k in ("layer", "shape", "val_map")} for r in rows]}
    best = next(r["layer"] for r in rows if r["best"])
    out["layer"] = best
    _log(f"fmnist-lora sweep {out['sweep']} -> {best}", verbose)
    x = lora_layer(lora_zoo, best)
    e, _ = train_expert(
        x,
        y,
        class_names=names,
        train_idx=sp.train,
        val_idx=sp.val,
        layer=best,
        members=seeds,
        train_config=train_config,
        progress=False,
        config=config,
    )
    st = e.scores(x[sp.test])
    emb_tr, emb_te = e.represent(x[sp.train]), e.represent(x[sp.test])
    for s in range(seeds):
        table.add("ProbeX (fmnist-lora)", "class acc", float(np.mean(st[s].argmax(1) == labels[sp.test])), seed=s)
        table.add("ProbeX (fmnist-lora)", "mAP", mean_average_precision(st[s], y[sp.test]), seed=s)
        pred = knn_classify(emb_tr[s], labels[sp.train], emb_te[s], k=5)
        table.add("ProbeX e (fmnist-lora)", "k-NN acc", float(np.mean(np.asarray(pred) == labels[sp.test])), seed=s)
        aucs = [
            one_class_auc(
                emb_tr[s][labels[sp.train] == c], emb_te[s][labels[sp.test] == c], emb_te[s][labels[sp.test] != c]
            )
            for c in np.unique(labels[sp.test])
            if (labels[sp.train] == c).sum() >= 3
        ]
        table.add("ProbeX e (fmnist-lora)", "one-class AUC", float(np.mean(aucs)), seed=s)
        rec = retrieval_recall(emb_te[s], labels[sp.test], ks=(1, 5))
        table.add("ProbeX e (fmnist-lora)", "R@1", rec[1], seed=s)
        table.add("ProbeX e (fmnist-lora)", "R@5", rec[5], seed=s)
    held_out = [c for c in held_out if c in set(lora_zoo.meta["class_name"])]
    if held_out and len(set(lora_zoo.meta["class_name"])) >= 6:
        held_idx = [names.index(c) for c in held_out]
        z, _ = train_expert(
            x,
            y,
            class_names=names,
            train_idx=sp.train,
            val_idx=sp.val,
            layer=best,
            config=config.replace(readout="zero-shot"),
            held_out=held_out,
            members=seeds,
            train_config=train_config,
            progress=False,
        )
        from weightspace.probex._text import class_embeddings

        zs = z.scores(x[sp.test], text=class_embeddings(names))
        for s in range(seeds):
            for k, v in zero_shot_metrics(zs[s], y[sp.test], held_idx).items():
                table.add("ProbeX zero-shot (fmnist-lora)", k, v, seed=s)
    out["table"] = table
    return out
