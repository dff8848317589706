"""What the issue-15 dev scripts share: the dev newsgroups pairs, the ks and seeds, and the table they
print (mean accuracy per row and over the rows; OUT=file.json keeps it)."""
import json
import os
from pathlib import Path

import numpy as np

PAIRS = [("sci.space", "sci.med"), ("rec.motorcycles", "rec.autos"), ("comp.windows.x", "comp.graphics"),
         ("talk.politics.guns", "talk.politics.misc")]
KS, SEEDS = (18, 32, 64), range(5)


def report(rows: dict, title: str = "") -> dict:
    """rows: row name -> one {method: accuracy} per episode. Prints the markdown table of the means."""
    cols = list(next(iter(rows.values()))[0])
    table = {n: {m: float(np.mean([a[m] for a in accs])) for m in cols} for n, accs in rows.items()}
    print((f"{title}\n" if title else "") + "| row | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for n, mean in table.items():
        print(f"| {n} | " + " | ".join(f"{mean[m]:.3f}" for m in cols) + " |")
    print("| mean | " + " | ".join(f"{np.mean([t[m] for t in table.values()]):.4f}" for m in cols) + " |")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"]).write_text(json.dumps(table, indent=1) + "\n")
    return table
