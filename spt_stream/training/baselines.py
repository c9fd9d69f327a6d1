"""Random Forest and Extra Trees baselines (scikit-learn), as in the paper's comparison.

One model per descriptor (the tree ensembles are single-target, which is the paper's point
about fragmented baselines), trained on the same training split as the SPT, on the same
inputs: the normalized spectrum on the model grid plus a one-hot of the absorbing element.
Evaluated on the same test split, clean and under the same Gaussian-noise levels.

Discrete descriptors: the classifiers are fitted on the label rounded to the nearest class
(fractional mixed-valence labels have no class of their own); their class probabilities, mapped
onto the schema's classes, give the predicted class (argmax) and the class expectation, scored
like the SPT's (:func:`spt_stream.training.evaluate.descriptor_metrics`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from spt_stream.model.descriptors import DescriptorSchema
from spt_stream.training.datasets import SpectraDataset
from spt_stream.training.evaluate import add_noise, descriptor_metrics
from spt_stream.training.targets import nearest_class_index

__all__ = ["BASELINES", "baseline_features", "evaluate_baselines"]

BASELINES = ("random_forest", "extra_trees")


def baseline_features(
    spectra: npt.NDArray[np.float32], elements: npt.NDArray[np.str_], vocab: Sequence[str]
) -> npt.NDArray[np.float32]:
    """Spectrum points followed by a one-hot of the element over ``vocab``."""
    onehot = (np.asarray(elements)[:, None] == np.asarray(vocab)[None, :]).astype(np.float32)
    return np.concatenate([spectra, onehot], axis=1)


def _make(kind: str, discrete: bool, seed: int, n_estimators: int, n_jobs: int) -> Any:
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        ExtraTreesRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )

    cls = {
        ("random_forest", True): RandomForestClassifier,
        ("random_forest", False): RandomForestRegressor,
        ("extra_trees", True): ExtraTreesClassifier,
        ("extra_trees", False): ExtraTreesRegressor,
    }[(kind, discrete)]
    return cls(n_estimators=n_estimators, random_state=seed, n_jobs=n_jobs)


def evaluate_baselines(
    train: SpectraDataset,
    test: SpectraDataset,
    schema: DescriptorSchema,
    noise_levels: Sequence[float] = (0.0,),
    seed: int = 0,
    n_estimators: int = 100,
    n_jobs: int = 2,
) -> dict[str, Any]:
    """``{baseline: {str(sigma): {descriptor: metrics}}}`` on the test split."""
    vocab = sorted(set(train.element.tolist()) | set(test.element.tolist()))
    x_tr = baseline_features(train.spectra, train.element, vocab)
    noisy = {
        str(float(s)): baseline_features(
            add_noise(test.spectra, float(s), seed), test.element, vocab
        )
        for s in sorted({0.0, *map(float, noise_levels)})
    }
    out: dict[str, Any] = {}
    for kind in BASELINES:
        res: dict[str, dict[str, Any]] = {lvl: {} for lvl in noisy}
        for spec in schema.descriptors:
            y = train.labels.get(spec.name)
            if y is None or not np.isfinite(y).any():
                continue
            ok = np.isfinite(y)
            discrete = spec.kind == "discrete"
            model = _make(kind, discrete, seed, n_estimators, n_jobs)
            if discrete:
                cv = np.asarray(spec.classes, dtype=np.float64)
                model.fit(x_tr[ok], cv[nearest_class_index(y[ok], spec.classes)])
            else:
                model.fit(x_tr[ok], y[ok])
            lab = test.labels.get(spec.name, np.full(len(test), np.nan, np.float32))
            for lvl, x_te in noisy.items():
                if discrete:
                    probs = _class_probs(model, x_te, spec.classes)
                    res[lvl][spec.name] = descriptor_metrics(spec, lab, probs @ cv, probs)
                else:
                    pred = np.asarray(model.predict(x_te), dtype=np.float64)
                    res[lvl][spec.name] = descriptor_metrics(spec, lab, pred)
        out[kind] = res
    return out


def _class_probs(model: Any, x: npt.NDArray[np.float32], classes: Sequence[float]) -> Any:
    """(N, C) probabilities over the schema's ``classes`` from a fitted classifier."""
    p = np.asarray(model.predict_proba(x), dtype=np.float64)
    out = np.zeros((p.shape[0], len(classes)))
    out[:, nearest_class_index(np.asarray(model.classes_, dtype=np.float64), classes)] = p
    return out
