"""Ray job entrypoint for the full pipeline: `python -m jobs.pipeline ...` (generate -> train -> grid)."""

from jobs._guard import run

if __name__ == "__main__":
    run("pipeline", "pipeline.full")  # checks the runtime env before importing pipeline's heavy modules
