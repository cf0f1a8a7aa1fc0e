"""Sweep over your own models: classify each model's samples, one folder per K, then
collect the folders into a fractions.csv and read off the capacities (paper Fig. 2).

Here the "models" are the exact denoisers of the first K points of the unit-circle pool
(K = 2, 9, 64: the positive control, a model that has memorized its training set); for
checkpoints of your own, load each with ``load_denoiser(checkpoint=PATH)`` instead, or
start from folders that ``memgen classify`` wrote. The collecting step is ``memgen
aggregate``; on the command line it reads

    memgen aggregate OUT/classify-K2:2 OUT/classify-K9:9 OUT/classify-K64:64 \
        --out OUT/fractions.csv
    memgen capacities OUT/fractions.csv

Run: python examples/sweep_checkpoints.py --out runs/examples/sweep
"""

import argparse
from pathlib import Path

import memgen
from memgen.data import circle_pool, train_heldout
from memgen.diffusion.generate import GenerateConfig, generate
from memgen.diffusion.loaders import load_denoiser
from memgen.experiments.aggregate import aggregate_folders
from memgen.metrics.capacity import describe, read_fraction_table
from memgen.metrics.classify import write_classification
from memgen.report.figures import plot_fractions, save_figure

KS = (2, 9, 64)


def measure(K: int, pool, out: Path) -> Path:
    """Sample S_eval (200) and S′ (400) from the model of S_K, classify, write a folder."""
    train, heldout = train_heldout(pool, K, seed=42)
    model = load_denoiser(exact=train, schedule="ve")  # or load_denoiser(checkpoint=...)
    sets = {}
    for name, n, seed in (("eval", 200, 1), ("synth", 400, 2)):
        config = GenerateConfig(n=n, sampler="euler_maruyama", steps=200, seed=seed,
                                name=name, clip=False, final_denoise=True)
        sets[name] = generate(model.denoiser, model.shape, model.schedule, config,
                              out / f"samples-K{K}", progress=False)
    result = memgen.classify(train, sets["eval"], sets["synth"], heldout=heldout[:4000])
    folder = out / f"classify-K{K}"
    folder.mkdir(exist_ok=True)
    write_classification(folder, result)  # summary.json, labels.npz: as memgen classify
    return folder


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pool = circle_pool()
    folders = [f"{measure(K, pool, out)}:{K}" for K in KS]  # DIR:K tags each folder
    aggregate_folders(folders, out / "fractions.csv", overwrite=True)
    table = read_fraction_table(out / "fractions.csv")
    caps = memgen.capacities(table)
    for capacity in caps.values():
        print(describe(capacity))
    fig = plot_fractions(table.K, table.fractions, table.lo, table.hi, caps, null=table.null,
                         title="exact denoiser on the unit circle")
    save_figure(fig, out / "fractions.png", dpi=130)
    print(f"wrote {out / 'fractions.csv'} and {out / 'fractions.png'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="Output folder.")
    main(parser.parse_args().out)
