"""Peak RSS (MB) per process kind while a pipeline runs, sampled every second.

Ray names its processes `ray::<Actor>.<method>` / `ray::<task>`, so the peaks come out per
actor class / task (e.g. the embedding actor, an ICL task), plus the driver (`tart ...`),
Ray's own daemons, and TOTAL (the sum over all of them at one instant, the box's need).
Writes the peaks as JSON to argv[1] on SIGTERM.

    python bench/rss_by_title.py peaks.json &  ...run...;  kill %1
"""

import collections
import json
import signal
import sys
import time

import psutil

peak: dict[str, float] = collections.defaultdict(float)


def kind(cmd: str, name: str) -> str | None:
    if cmd.startswith("ray::"):
        return cmd.split()[0].split(".")[0]  # ray::MapWorker(MapBatches(BackboneEmbedder)), ray::run_text_cells (icl), ...
    if "tart " in cmd or "jobs." in cmd:
        return "driver"
    if "ray" in cmd or name in ("raylet", "gcs_server"):
        return "ray-system"
    return None


def stop(*_):
    with open(sys.argv[1], "w") as f:
        json.dump({k: round(v) for k, v in sorted(peak.items())}, f, indent=1)
    sys.exit(0)


signal.signal(signal.SIGTERM, stop)
while True:
    total = 0.0
    for p in psutil.process_iter(["cmdline", "memory_info", "name"]):
        try:
            k = kind(" ".join(p.info["cmdline"] or []), p.info["name"])
            rss = p.info["memory_info"].rss / 2**20
        except (psutil.Error, TypeError, AttributeError):
            continue
        if k:
            peak[k] = max(peak[k], rss)
            total += rss
    peak["TOTAL"] = max(peak["TOTAL"], total)
    time.sleep(1)
