"""Real server processes for tests: `mlflow server` (sqlite backend + artifacts dir, own process group),
a hub-shaped file server, and `kill_processes_mentioning` (the teardown of the Ray clusters tests start).

`MlflowServer(root)` keeps its database and port across `stop()` / `start()`, so a test
can kill the server mid-grid and bring the same server back later. `db_template`: an
already migrated (empty) MLflow sqlite file to start from instead of an empty database
(MLflow's schema migrations are most of a fresh server's start-up on a 2-core box).

The server runs without MLflow's job-execution runner (MLFLOW_SERVER_ENABLE_JOB_EXECUTION
=false: a second process, a huey consumer for GenAI jobs, that the project never uses and
that doubled the start-up time on 2 cores); tracking, the model registry and artifact
serving are the real server's.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent  # the venv's bin: `mlflow`


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    def __init__(self, root: Path, env: dict | None = None, db_template: Path | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.env = {**(env or os.environ), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc: subprocess.Popen | None = None
        if db_template is not None and not (self.root / "srv.db").exists():
            shutil.copyfile(db_template, self.root / "srv.db")

    def start(self, timeout_s: float = 120) -> "MlflowServer":
        cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.root}/srv.db",
               "--artifacts-destination", str(self.root / "art"), "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", "1"]
        log = open(self.root / "server.log", "a")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        log.close()
        deadline = time.time() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=3) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError(f"mlflow server did not come up:\n{(self.root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL the whole group (mlflow spawns uvicorn/gunicorn workers): a crash, not a shutdown."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc = None


class HubServer:
    """A local HTTP server shaped like the Hugging Face hub's file endpoint, for the validation
    that fetches hub backbones' configs (the real hub is unreachable from these machines).

    `HubServer({"owner/name": {...config...}})` serves `/<repo>/resolve/<rev>/config.json` of
    those repos (HEAD and GET, with the commit and ETag headers huggingface_hub reads) and
    answers any other repo the way the hub answers an unknown one (404, X-Error-Code:
    RepoNotFound). Point a process at it with HF_ENDPOINT=server.url, HF_HUB_OFFLINE=0.
    """

    def __init__(self, repos: dict[str, dict]):
        import http.server
        import json
        import threading

        bodies = {repo: json.dumps(cfg).encode() for repo, cfg in repos.items()}

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, with_body: bool) -> None:
                parts = self.path.split("?")[0].strip("/").split("/")
                repo = "/".join(parts[:2])
                if len(parts) >= 5 and parts[2] == "resolve" and repo in bodies and parts[-1] == "config.json":
                    body = bodies[repo]
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.send_header("ETag", f'"{abs(hash(body)):x}"')
                    self.send_header("X-Repo-Commit", "0" * 40)
                    self.end_headers()
                    if with_body:
                        self.wfile.write(body)
                    return
                msg = b'{"error": "Repository Not Found"}'
                self.send_response(404)
                self.send_header("X-Error-Code", "RepoNotFound")
                self.send_header("X-Error-Message", "Repository not found")
                self.send_header("Content-Length", str(len(msg)))
                self.end_headers()
                if with_body:
                    self.wfile.write(msg)

            def do_HEAD(self):  # noqa: N802 - http.server's names
                self._answer(False)

            def do_GET(self):  # noqa: N802
                self._answer(True)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def kill_processes_mentioning(marker: str) -> None:
    """SIGTERM then SIGKILL every process (of this user) whose command line, working directory or open
    files name `marker`: Ray's agents rename themselves (`ray::DashboardAgent`), ignore SIGTERM and
    outlive their raylet; left running they keep the next cluster's job agent from registering."""
    import psutil

    def mentions(p) -> bool:
        if marker in " ".join(p.info["cmdline"] or []) or marker in (p.info["cwd"] or ""):
            return True
        return any(marker in f.path for f in p.open_files())

    me = os.getpid()
    procs = []
    for p in psutil.process_iter(["pid", "cmdline", "cwd", "username"]):
        try:
            if p.pid != me and mentions(p):
                procs.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=3)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
