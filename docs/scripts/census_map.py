"""The spurious regime's map from attractor censuses (``memgen census`` folders or a
sweep's ``RUN/cache/census-*`` folders: each holds census.json): per series, the endpoint
mass in recurring attractors away from the training images (spurious), at training
images (memorized), and the held-out null, against K at one radius fraction f; the
figure and the table of "Where the spurious regime is" in docs/RESULTS.md.

    python docs/scripts/census_map.py --fraction 0.2 --out OUT.png \
        "LABEL=FOLDER,FOLDER,..." ["LABEL=..." ...]
"""

import argparse
import json
from pathlib import Path

import matplotlib.pyplot as plt

from memgen.report.figures import save_figure


def read(folder: str, fraction: float) -> dict:
    record = json.loads((Path(folder) / "census.json").read_text())
    rows = [r for r in record["radii"] if abs(r["fraction"] - fraction) < 1e-12]
    if not rows:
        shown = ", ".join(f"{r['fraction']:g}" for r in record["radii"])
        raise SystemExit(f"{folder}: no census at fraction {fraction:g} (it has {shown})")
    return {"K": record["n_train"], **rows[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("series", nargs="+", help="LABEL=FOLDER,FOLDER,...")
    args = parser.parse_args()
    fig, (spur, mem) = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
    print("series | K | r | memorized | spurious clusters | spurious mass | null | "
          "spurious precision (held-out)")
    for series in args.series:
        label, folders = series.split("=", 1)
        rows = sorted((read(f, args.fraction) for f in folders.split(",")),
                      key=lambda r: r["K"])
        Ks = [r["K"] for r in rows]
        line, = spur.plot(Ks, [r["mass_spurious"] for r in rows], "o-", label=label)
        spur.plot(Ks, [r["null_mass_spurious"] for r in rows], ":", color=line.get_color())
        mem.plot(Ks, [r["mass_memorized"] for r in rows], "o-", color=line.get_color(),
                 label=label)
        for r in rows:
            print(f"{label} | {r['K']} | {r['radius']:.2f} | {r['mass_memorized']:.3f} | "
                  f"{r['n_spurious']} | {r['mass_spurious']:.3f} | "
                  f"{r['null_mass_spurious']:.3f} | {r['precision_spurious']:.2f} "
                  f"({r['heldout_precision']:.2f})")
    for ax, title in ((spur, "spurious mass (dotted: held-out null)"),
                      (mem, "memorized mass")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("K (training images)")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(-0.02, 1.02 if ax is mem else None)
    spur.legend(fontsize=7)
    fig.suptitle(f"attractor census at r = {args.fraction:g} × held-out median distance",
                 fontsize=10)
    save_figure(fig, args.out)


if __name__ == "__main__":
    main()
