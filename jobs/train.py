"""Ray job entrypoint: `ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- python -m jobs.train ...`."""

from jobs._guard import run

if __name__ == "__main__":
    run("train", "pipeline.train")  # checks the runtime env before importing pipeline's heavy modules
