"""Running the one-process and the two-process (torchrun, gloo) version of a CLI command side by side."""

from __future__ import annotations

import os
import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str]) -> list[str]:
    """``python -m torch.distributed.run`` with 2 processes on a free loopback port, then ``args``."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), *args]


def one_and_two_processes(one_args: list[str], two_args: list[str], timeout: float = 300
                          ) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """Run ``python *one_args`` and ``torchrun(two_args)`` at the same time, one thread per process
    (OMP_NUM_THREADS=1, so that sharing the CPU changes no result), and return both when both have
    ended. Most of each run is process start-up, so on 2 cores the pair takes about the time of the
    longer one."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd in ([sys.executable, *one_args], torchrun(two_args))]
    done = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return done[0], done[1]
