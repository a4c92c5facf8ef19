"""sweep.py on a real two-node Ray cluster built on this machine: a head with no CPUs beside the driver, and worker
nodes whose processes live in a private mount namespace where the driver's folder and the repository are empty
tmpfs mounts. Everything a trial and its attacks make reaches the driver's --out through --storage alone, and a
trial whose worker node is killed resumes on a fresh node from the checkpoint it left in the storage."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import torch

from conftest import ROOT

import sweep

# Tests that start Ray run one after another on one pytest-xdist worker (--dist loadgroup): two Ray instances
# starting at once on one machine compete for its ports and its /tmp/ray session.
pytestmark = pytest.mark.xdist_group("ray")
needs_private_mounts = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ray") is None or
    subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0,
    reason="a worker node that cannot see the driver's files needs a private mount namespace (root, unshare)")

NAME = "sac__HalfCheetah-v4__s1"


def free_ports(n: int, taken: set[int]) -> list[int]:
    """n distinct ports free now and not in `taken` (which they join): every socket stays open until all n are
    picked, so one call never returns a port twice, and `taken` keeps two calls apart (a node's own port lists
    and the nodes of one cluster)."""
    socks, ports = [], []
    while len(ports) < n:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        port = s.getsockname()[1]
        if port not in taken:
            taken.add(port)
            ports.append(port)
    for s in socks:
        s.close()
    return ports


class Cluster:
    """Ray nodes of this test only (own temp dirs, ports and loopback addresses), each a `ray start --block` in its
    own process group, killed by that group: another Ray on this machine is never touched."""

    def __init__(self, base: str):
        self.base, self.nodes, self.taken, self.logs = base, [], set(), {}
        # token auth would need the head's token copied into each worker's HOME; these nodes only talk over loopback
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "PYTHONPATH"}
        self.env.update(RAY_AUTH_MODE="disabled", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
        self.port = free_ports(1, self.taken)[0]
        self.address = f"127.0.0.1:{self.port}"

    def node_args(self, ip: str, temp_dir: str) -> list[str]:
        manager, objects, client, agent, agent_grpc, metrics, runtime_env = free_ports(7, self.taken)
        return ["--node-ip-address", ip, "--temp-dir", temp_dir, "--node-manager-port", str(manager),
                "--object-manager-port", str(objects), "--dashboard-agent-listen-port", str(agent),
                "--dashboard-agent-grpc-port", str(agent_grpc), "--metrics-export-port", str(metrics),
                "--runtime-env-agent-port", str(runtime_env), "--worker-port-list",
                ",".join(map(str, free_ports(12, self.taken))), "--disable-usage-stats", "--block"] + \
            (["--ray-client-server-port", str(client)] if ip == "127.0.0.1" else [])

    def start_head(self) -> None:
        temp = os.path.join(self.base, "head")
        cmd = ["ray", "start", "--head", "--port", str(self.port), "--num-cpus", "0", "--include-dashboard", "false",
               *self.node_args("127.0.0.1", temp)]
        self._start(cmd, temp)

    def start_worker(self, label: str, ip: str, hidden: list[str]) -> subprocess.Popen:
        """A node whose processes see an empty folder at each of `hidden` (and run from a HOME of their own)."""
        home = os.path.join(self.base, label)
        os.makedirs(os.path.join(home, "tmp"), exist_ok=True)
        mounts = " && ".join(f"mount -t tmpfs tmpfs '{h}'" for h in hidden)
        ray = " ".join(["ray", "start", "--address", self.address, "--num-cpus", "1",
                        *self.node_args(ip, os.path.join(home, "ray"))])
        cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c", f"{mounts} && cd '{home}' && exec {ray}"]
        return self._start(cmd, home, HOME=home, TMPDIR=os.path.join(home, "tmp"))

    def _start(self, cmd: list[str], folder: str, **env) -> subprocess.Popen:
        os.makedirs(folder, exist_ok=True)
        log = open(os.path.join(folder, "node.log"), "w")
        proc = subprocess.Popen(cmd, cwd=folder, env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.nodes.append(proc)
        self.logs[proc.pid] = log.name
        return proc

    def wait_for_cpus(self, cpus: float, timeout: float = 120) -> None:
        probe = "import ray; ray.init(address='%s', log_to_driver=False); print(ray.cluster_resources().get('CPU', 0))"
        deadline = time.time() + timeout
        while time.time() < deadline:
            proc = subprocess.run([sys.executable, "-c", probe % self.address], capture_output=True, text=True,
                                  env=self.env, timeout=120)
            if proc.returncode == 0 and float(proc.stdout.split()[-1]) >= cpus:
                return
            dead = [node for node in self.nodes if node.poll() is not None]
            if dead:  # a node that exited never joins: say why at once, from its own log
                with open(self.logs[dead[0].pid]) as f:
                    raise AssertionError(f"a Ray node exited before the cluster had {cpus} CPUs:\n{f.read()[-1500:]}")
            time.sleep(2)
        raise AssertionError(f"the cluster never had {cpus} CPUs: {proc.stdout[-500:]} {proc.stderr[-1500:]}")

    def kill(self, proc: subprocess.Popen) -> None:
        """The node's process group and every descendant, at once (a node lost with its machine, no clean exit)."""
        for pid in [proc.pid] + descendants(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def stop(self) -> None:
        for proc in reversed(self.nodes):
            try:
                self.kill(proc)
            except Exception as e:  # the other nodes still go
                print(f"could not kill node {proc.pid}: {e}")


def descendants(pid: int) -> list[int]:
    """Every process below pid, from /proc (a Ray worker may leave its node's process group)."""
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent[int(entry)] = int(f.read().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    found, frontier = [], [pid]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier]
        found += kids
        frontier = kids
    return found


@needs_private_mounts
def test_a_two_node_cluster_without_shared_folders_brings_every_result_to_the_driver_and_resumes_a_lost_trial():
    base = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths live under the nodes' temp dirs
    driver, storage = os.path.join(base, "driver"), os.path.join(base, "storage")
    out = os.path.join(driver, "studies", "demo")
    os.makedirs(driver)
    cluster = Cluster(base)
    sweep_proc = None
    try:
        cluster.start_head()
        first = cluster.start_worker("w1", "127.0.0.2", hidden=[driver, ROOT])
        cluster.wait_for_cpus(1)
        cmd = [sys.executable, os.path.join(ROOT, "sweep.py"), "--methods", "sac", "--envs", "HalfCheetah-v4",
               "--seeds", "1", "--budget-scale", "0.002", "--save-every-frac", "0.25", "--address", cluster.address,
               "--storage", storage, "--out", out,
               "--train-args", json.dumps({"learning_starts": 500, "eval_episodes": 1}),
               "--seed-attacks", "natural,uniform", "--attacks", "natural", "--episodes", "1"]
        sweep_proc = subprocess.Popen(cmd, cwd=driver, env=cluster.env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
        stored = os.path.join(storage, "demo", "trials", NAME, "model.pt")
        killed_at, deadline = None, time.time() + 400
        while time.time() < deadline and sweep_proc.poll() is None:
            time.sleep(0.5)
            if os.path.isfile(stored) and sweep.saved_step(stored) >= 500:
                # the worker's view of the driver's folder and of the code: empty (the separation is real)
                seen = f"/proc/{first.pid}/root"
                assert os.listdir(seen + driver) == [] and os.listdir(seen + ROOT) == [] and os.listdir(driver)
                killed_at = sweep.saved_step(stored)
                cluster.kill(first)
                break
        assert killed_at is not None, "the trial never stored a checkpoint"
        assert killed_at < 2000 and not os.path.exists(os.path.join(storage, "demo", "trials", NAME, "done.json"))
        cluster.start_worker("w2", "127.0.0.3", hidden=[driver, ROOT])
        output, _ = sweep_proc.communicate(timeout=600)
        assert sweep_proc.returncode == 0, output[-4000:]
        # the learned-attacker grid on the same cluster: the victim goes out as bytes, the attackers come back so
        search = subprocess.run([sys.executable, os.path.join(ROOT, "attacks", "search.py"), "--ckpt",
                                 os.path.join(out, "models", f"{NAME}.pt"), "--address", cluster.address,
                                 "--columns", "sa_rl_ppo", "--attack-budget", "128", "--ppo-steps", "64",
                                 "--attacker-hidden", "16", "16", "--episodes", "1", "--save-dir",
                                 os.path.join(driver, "attackers"), "--storage", os.path.join(storage, "progress")],
                                cwd=driver, env=cluster.env,
                                capture_output=True, text=True, timeout=600)
        assert search.returncode == 0, search.stdout[-3000:] + search.stderr[-3000:]
        assert "| sa_rl_ppo | 2 | 128 |" in search.stdout
        assert len([f for f in os.listdir(os.path.join(driver, "attackers")) if f.endswith((".pt", ".json"))]) == 4
    finally:
        if sweep_proc is not None and sweep_proc.poll() is None:
            sweep_proc.kill()
        cluster.stop()
    trial = os.path.join(out, "trials", NAME)
    attempts = [json.loads(line) for line in open(os.path.join(trial, "attempts.jsonl")).read().splitlines()]
    assert len(attempts) == 2 and attempts[0]["start_step"] == 0 and attempts[1]["start_step"] >= killed_at
    assert attempts[1]["replay_buffer"] == "restored"  # the buffer travelled through the storage with its checkpoint
    start = attempts[1]["start_step"]
    log = open(os.path.join(trial, "train.log")).read()
    assert f"at step {start}" in log and "continuing" in log and not log.count(driver)
    done = json.load(open(os.path.join(trial, "done.json")))
    assert done["global_step"] == 2000 and done["start_step"] == start
    assert "resumed at step" in output
    slim = torch.load(os.path.join(out, "models", f"{NAME}.pt"), weights_only=True)
    assert slim["slim"] and "actor_optimizer" not in slim
    row = json.load(open(os.path.join(out, "models", f"{NAME}_attacks.json")))
    assert set(row["attacks"]) == {"natural", "uniform"} and row["ckpt"] == os.path.join(out, "models", f"{NAME}.pt")
    assert os.path.isfile(os.path.join(out, "attacks", "sac__HalfCheetah-v4.json"))
    assert "| HalfCheetah-v4 | SAC | 1 |" in open(os.path.join(out, "results", "table.md")).read()
    assert not any(f.endswith("_buffer.pt") for _, _, fs in os.walk(out) for f in fs)  # buffers stay in the storage
    shutil.rmtree(base, ignore_errors=True)


def test_the_clusters_ports_never_repeat_across_calls():
    """A Ray node refuses to start when two of its components share a port: two draws never repeat one, though
    the first draw's sockets are closed (free again to the OS) when the second runs."""
    taken: set[int] = set()
    first, second = free_ports(300, taken), free_ports(300, taken)
    assert len(set(first) | set(second)) == 600 and taken == set(first) | set(second)


def test_bad_storage_is_one_line(tmp_path):
    base = [sys.executable, os.path.join(ROOT, "sweep.py"), "--methods", "sac", "--envs", "Hopper-v4", "--seeds", "1",
            "--out", str(tmp_path / "s")]
    for storage, said in [("/proc/no/such", "the driver cannot write there"),
                          ("s3://bucket/studies", "pip install pyarrow" if not has_pyarrow() else "--storage s3://"),
                          ("nosuch://x/y", "nosuch" if has_pyarrow() else "pip install pyarrow")]:
        proc = subprocess.run(base + ["--storage", storage], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and said in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()[-1]) < 300
    proc = subprocess.run(base[:-2] + ["--out", str(tmp_path / "c"), "--address", "auto"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "give --storage" in proc.stderr


def has_pyarrow() -> bool:
    try:
        import pyarrow.fs  # noqa: F401
    except ImportError:
        return False
    return True


def test_storage_sends_a_buffer_before_its_checkpoint_and_the_done_marker_last(tmp_path, monkeypatch):
    """What the storage holds is always resumable: a reader that sees a checkpoint also sees its buffer, and a done
    marker means the rest is there; unchanged files are not sent again; a file:// URI is a local path."""
    local = tmp_path / "trial"
    (local / "runs").mkdir(parents=True)
    for name in ("done.json", "model.pt", "model_buffer.pt", "train.log", "runs/events", "model.pt.tmp.12"):
        (local / name).write_text(name)
    store = sweep.Storage(f"file://{tmp_path / 'store'}")
    assert store.uri == str(tmp_path / "store")
    order = []
    put = store.put
    monkeypatch.setattr(store, "put", lambda src, rel: (order.append(rel), put(src, rel)))
    sent: dict = {}
    store.put_tree(str(local), "trials/t", sent, last=("done.json",))
    assert order.index("trials/t/model_buffer.pt") < order.index("trials/t/model.pt")
    assert order[-1] == "trials/t/done.json" and "trials/t/model.pt.tmp.12" not in order
    order.clear()
    (local / "train.log").write_text("more")
    store.put_tree(str(local), "trials/t", sent)
    assert order == ["trials/t/train.log"]
    back = tmp_path / "back"
    got = store.get("trials/t", str(back), skip=("_buffer.pt",))
    assert sorted(os.path.relpath(p, back) for p in got) == ["done.json", "model.pt", "runs/events", "train.log"]
    assert (back / "train.log").read_text() == "more" and store.exists("trials/t/done.json")
    assert store.get("trials/none", str(tmp_path / "none")) == [] and not store.exists("trials/none")


def test_a_folder_sender_keeps_the_storage_resumable_without_overwriting_other_tasks_files(tmp_path, capsys):
    """An attack task's attackers folder: a training state reaches the storage while the task runs and leaves it
    once its attacker (then its record) is there; what the task got at the start and did not change is never sent
    back over the newer copy another task stored meanwhile; an exception still sends the last save."""
    store = sweep.Storage(str(tmp_path / "store"))
    (tmp_path / "store" / "attackers").mkdir(parents=True)
    (tmp_path / "store" / "attackers" / "other.partial.pt").write_text("other at 10k")
    local = tmp_path / "scratch" / "attackers"
    got = store.get("attackers", str(local))
    (tmp_path / "store" / "attackers" / "other.partial.pt").write_text("other at 20k")  # the other task goes on
    stored = tmp_path / "store" / "attackers" / "mine.partial.pt"
    with sweep.FolderSender(store, str(local), "attackers", every_s=0.05, known=got, removals=True,
                            last=(".json",)) as sender:
        (local / "mine.partial.pt").write_text("mine at 10k")
        deadline = time.time() + 10
        while not stored.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert stored.read_text() == "mine at 10k"  # sent by the thread, while the task runs
        order = []
        put = store.put
        store.put = lambda src, rel: (order.append(rel), put(src, rel))
        (local / "mine.pt").write_text("attacker")
        (local / "mine.json").write_text("record")
        (local / "mine.partial.pt").unlink()
    assert sorted(os.listdir(tmp_path / "store" / "attackers")) == ["mine.json", "mine.pt", "other.partial.pt"]
    assert order.index("attackers/mine.pt") < order.index("attackers/mine.json")
    assert (tmp_path / "store" / "attackers" / "other.partial.pt").read_text() == "other at 20k"
    assert sender.sent.keys() == {str(local / "other.partial.pt"), str(local / "mine.pt"), str(local / "mine.json")}
    # the task writes a record and removes its state while a pass uploads: the state stays until the record is there
    sender = sweep.FolderSender(store, str(local), "attackers", every_s=60, removals=True, last=(".json",))
    (local / "next.partial.pt").write_text("next at 10k")
    sender.send()
    (local / "next.pt").write_text("attacker")

    def put_while_the_task_finishes(src, rel):
        if rel == "attackers/next.pt":
            (local / "next.json").write_text("record")
            (local / "next.partial.pt").unlink()
        put(src, rel)

    store.put = put_while_the_task_finishes
    sender.send()
    assert (tmp_path / "store" / "attackers" / "next.partial.pt").exists()
    assert not (tmp_path / "store" / "attackers" / "next.json").exists()
    sender.send()
    assert (tmp_path / "store" / "attackers" / "next.json").exists()
    assert not (tmp_path / "store" / "attackers" / "next.partial.pt").exists()
    # a storage hiccup in the thread is one line and the next pass sends
    failures = []

    def flaky(src, rel):
        if not failures:
            failures.append(rel)
            raise OSError("throttled")
        put(src, rel)

    store.put = flaky
    with sweep.FolderSender(store, str(local), "attackers", every_s=0.05):
        (local / "later.partial.pt").write_text("later at 10k")
        deadline = time.time() + 10
        while not (tmp_path / "store" / "attackers" / "later.partial.pt").exists() and time.time() < deadline:
            time.sleep(0.05)
    assert failures == ["attackers/later.partial.pt"]
    assert (tmp_path / "store" / "attackers" / "later.partial.pt").read_text() == "later at 10k"
    assert "sending" in capsys.readouterr().out
    store.put = put
    with pytest.raises(RuntimeError), sweep.FolderSender(store, str(local), "attackers", every_s=60):
        (local / "mine2.partial.pt").write_text("saved, then the task failed")
        raise RuntimeError
    assert (tmp_path / "store" / "attackers" / "mine2.partial.pt").read_text() == "saved, then the task failed"
