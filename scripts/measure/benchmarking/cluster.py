"""A real two-node Ray cluster on 127.0.0.1, for the tests and the benchmark of analyze.py.

Ray registers its nodes under the host's network address even when told 127.0.0.1, so the
head, the second node and the drivers run inside a network and PID namespace of their own
(`unshare --net --pid --fork --mount-proc`, then `ip link set lo up`): there loopback is
the only address, and when the namespace's first process ends, the kernel ends every Ray
process started in it. Nothing here runs `ray stop`, which would end every Ray process on
the machine.

    run_on_two_nodes([argv, ...], kill_node_workers_after=(parts_folder, n))

This file is also what runs inside the namespace (python cluster.py PLAN.json).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PORT = 6379
UNSHARE = ["unshare", "--net", "--pid", "--fork", "--mount-proc"]


def unavailable() -> str | None:
    """Why a cluster cannot be started here (no Ray, no namespaces), or None."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return "Ray is not installed: pip install -e .[cluster]"
    if not shutil.which("unshare") or not shutil.which("ip"):
        return "unshare and ip (util-linux, iproute2) are needed for a cluster on loopback only"
    probe = subprocess.run(UNSHARE + ["ip", "link", "set", "lo", "up"], capture_output=True, text=True)
    if probe.returncode:
        return f"network and PID namespaces are not allowed here: {probe.stderr.strip()[:200]}"
    return None


def run_on_two_nodes(commands, timeout=900, kill_node_workers_after=None, cpus_per_node=1):
    """Start a head and a second node (`cpus_per_node` CPUs each) on 127.0.0.1 in a namespace
    of their own, then run each command (an argv list) in turn with RAY_ADDRESS set to the
    head. kill_node_workers_after=(folder, n): during the first command, once `folder` holds
    n committed units (*.inputs.parquet) and the second node runs a task, SIGKILL every
    worker process of the second node. Returns {"runs": [{returncode, stdout, stderr,
    elapsed}], "killed": [pids], "nodes": n}. Every Ray process ends with the namespace."""
    plan = {"commands": [list(map(str, c)) for c in commands], "cpus": cpus_per_node,
            "kill": None if kill_node_workers_after is None else [str(kill_node_workers_after[0]),
                                                                  kill_node_workers_after[1]]}
    with tempfile.TemporaryDirectory(prefix="rayc") as tmp:  # short: Ray's socket paths must fit 107 bytes
        plan["temp_dir"] = tmp
        (Path(tmp) / "plan.json").write_text(json.dumps(plan))
        result = subprocess.run(UNSHARE + [sys.executable, __file__, str(Path(tmp) / "plan.json")],
                                capture_output=True, text=True, timeout=timeout)
        out = Path(tmp) / "result.json"
        if not out.exists():
            raise RuntimeError(f"the cluster did not run (exit {result.returncode}): {result.stderr[-2000:]}")
        return json.loads(out.read_text())


# ---------------------------------------------------------------- inside the namespace
def children(pid):
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    out.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
            except (OSError, IndexError, ValueError):
                continue
    return out


def raylets():
    """PIDs of the raylets (one per node), oldest first."""
    found = []
    for pid in sorted(map(int, filter(str.isdigit, os.listdir("/proc")))):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"/raylet"):
                found.append(pid)
        except OSError:
            continue
    return found


def inside(plan_path):
    plan = json.loads(Path(plan_path).read_text())
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": f"127.0.0.1:{PORT}"}
    ray = str(Path(sys.executable).parent / "ray")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    common = ["--node-ip-address=127.0.0.1", f"--num-cpus={plan['cpus']}", "--object-store-memory=100000000",
              "--disable-usage-stats"]
    subprocess.run([ray, "start", "--head", f"--port={PORT}", "--include-dashboard=false",
                    f"--temp-dir={plan['temp_dir']}", *common], check=True, capture_output=True, env=env)
    head_raylets = set(raylets())
    subprocess.run([ray, "start", f"--address=127.0.0.1:{PORT}", *common], check=True, capture_output=True, env=env)
    second = [pid for pid in raylets() if pid not in head_raylets]
    runs, killed = [], []
    for n, command in enumerate(plan["commands"]):
        started = time.time()
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if n == 0 and plan["kill"]:
            folder, count = Path(plan["kill"][0]), plan["kill"][1]
            while process.poll() is None and not killed:
                # Worker processes are titled ray::IDLE or ray::FUNCTION; the node's agents
                # (ray::DashboardAgent, ray::RuntimeEnvAgent) are not workers: the raylet ends with them.
                busy = [(pid, cmd) for raylet in second for pid, cmd in children(raylet)
                        if cmd.startswith("ray::") and not cmd.split()[0].endswith("Agent")]
                done = len(list(folder.glob("*.inputs.parquet"))) if folder.exists() else 0
                if done >= count and any("read_unit" in cmd for _, cmd in busy):
                    for pid, _ in busy:
                        os.kill(pid, 9)
                        killed.append(pid)
                time.sleep(0.1)
        stdout, stderr = process.communicate()
        runs.append({"returncode": process.returncode, "stdout": stdout, "stderr": stderr,
                     "elapsed": time.time() - started})
    (Path(plan["temp_dir"]) / "result.json").write_text(json.dumps({"runs": runs, "killed": killed,
                                                                     "second_raylet": second}))


if __name__ == "__main__":
    inside(sys.argv[1])
