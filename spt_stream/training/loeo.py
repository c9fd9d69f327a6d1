"""Leave-one-element-out models: ``python -m spt_stream.training.loeo --out out/loeo``.

For each element X with measured references (Co, Fe, Mn, Zn): the simulator is re-calibrated on
every OTHER element's references (warm-started from the shipped calibration), a training set is
generated WITHOUT element X, and a model is trained on it (smaller than the default model: the
same recipe, architecture and augmentation, fewer rows and epochs). X's references are then
scored by ``python -m spt_stream.training.real_eval --loeo out/loeo`` as an element the whole
chain never saw: the honest estimate of transfer to the elements kept out of the project
(V, Cr, Ni, Cu...).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from spt_stream.config import CONFIG_DIR

__all__ = ["main", "train_without"]


def train_without(
    element: str, out: Path, *, n: int, epochs: int, nfev: int, workers: int, seed: int = 0
) -> Path:
    """Calibrate, generate and train without ``element``; returns the checkpoint path."""
    from spt_stream.simulate.calibrate import fit_params, load_params, make_targets, save_params
    from spt_stream.simulate.generate import generate_dataset
    from spt_stream.simulate.sampler import load_recipe
    from spt_stream.training.train import load_train_config, train

    out.mkdir(parents=True, exist_ok=True)
    physics = out / f"calibrated-no-{element}.yaml"
    if physics.is_file():  # a previous run's calibration (delete the folder to redo it)
        params = load_params(physics)
    else:
        targets = [t for t in make_targets() if t.ref.element != element]
        start = load_params(CONFIG_DIR / "simulate" / "calibrated.yaml")
        params, summary = fit_params(targets, start, max_nfev=nfev)
        save_params(params, physics, {"left_out": element, "files": summary["files"]})
    recipe = load_recipe(CONFIG_DIR / "simulate" / "default.yaml")
    elements = {e: w for e, w in recipe.elements.items() if e != element}
    recipe = dataclasses.replace(recipe, elements=elements, physics=str(physics.resolve()))
    data = out / f"sim-no-{element}"
    if not (data / "meta.json").is_file():
        generate_dataset(recipe, n, seed, workers=workers, out=data, params=params)
    cfg = load_train_config(CONFIG_DIR / "train" / "default.yaml")
    cfg = cfg.model_copy(
        update={
            "name": f"spt-loeo-{element}",
            "dataset": data,
            "epochs": epochs,
            "baselines": False,
            "noise_levels": (0.0,),
            "output": out / f"spt-loeo-{element}.safetensors",
        }
    )
    train(cfg, progress=False)
    return cfg.output


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--out", type=Path, default=Path("out/loeo"))
    ap.add_argument("--elements", nargs="+", default=["Fe", "Mn", "Zn", "Co"])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--nfev", type=int, default=8)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args(argv)
    for el in args.elements:
        t0 = time.perf_counter()
        path = train_without(
            el, args.out, n=args.n, epochs=args.epochs, nfev=args.nfev, workers=args.workers
        )
        print(f"loeo {el}: {path} in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
