"""Ray job entrypoint: `ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- python -m jobs.embed ...`."""

from jobs._guard import run

if __name__ == "__main__":
    run("embed", "pipeline.embed")  # checks the runtime env before importing pipeline's heavy modules
