"""launch/tpu_pod.sh's run and restart loop against a fake `gcloud` on PATH: a stateful stand-in for the TPU API
(create / describe / delete), ssh (each training attempt prints what the workers would, then the TPU may be
preempted), and `gcloud storage ls` (the workdir's checkpoints)."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]

FAKE_GCLOUD = f"""#!{sys.executable}
import json, os, sys
from pathlib import Path
d = Path(os.environ["FAKE_GCLOUD_DIR"])
args = sys.argv[1:]
with open(d / "calls.jsonl", "a") as f:
    f.write(json.dumps(args) + "\\n")
scenario = json.loads((d / "scenario.json").read_text())
state_file = d / "state.json"
st = json.loads(state_file.read_text()) if state_file.exists() else {{"states": None, "attempt": 0}}
save = lambda: state_file.write_text(json.dumps(st))
verb = args[3] if args[:2] == ["compute", "tpus"] else None
if args[:2] == ["storage", "ls"]:
    steps = scenario.get("steps", [])
    for s in steps:
        print(args[2].rstrip("/") + f"/{{s}}/")
    sys.exit(0 if steps else 1)
if args[:2] == ["storage", "cp"]:
    sys.exit(0)
if verb == "create":
    st["states"] = list(scenario.get("after_create", [scenario["up"]])); save()
elif verb == "delete":
    st["states"] = None; save()
elif verb == "describe":
    if st["states"] is None:
        print("ERROR: NOT_FOUND", file=sys.stderr); sys.exit(1)
    print(st["states"][0])
    if len(st["states"]) > 1:
        st["states"].pop(0); save()
elif verb == "ssh":
    cmd = args[args.index("--command") + 1]
    if " setup " in cmd:
        print("setup done")
        sys.exit(scenario.get("setup_rc", 0))
    elif " train " in cmd:
        a = scenario["attempts"][st["attempt"]]
        st["attempt"] += 1
        for line in a.get("output", []):
            print(line)
        for host, rc in a.get("workers", {{}}).items():
            print(f"tlv_jax-exit host={{host}} rc={{rc}}")
        if "then" in a:  # the TPU's states after this attempt (e.g. PREEMPTED), the last one stays
            st["states"] = a["then"] if isinstance(a["then"], list) else [a["then"]]
        save()
        sys.exit(a.get("ssh_rc", 0))
"""


@pytest.fixture
def fake(tmp_path):
    d = tmp_path / "gcloud"
    (d / "bin").mkdir(parents=True)
    exe = d / "bin" / "gcloud"
    exe.write_text(FAKE_GCLOUD)
    exe.chmod(0o755)

    def launch(scenario: dict, *args: str, existing=None) -> subprocess.CompletedProcess:
        (d / "scenario.json").write_text(json.dumps(scenario))
        if existing:
            (d / "state.json").write_text(json.dumps({"states": [existing], "attempt": 0}))
        env = dict(os.environ, PATH=f"{d / 'bin'}:{os.environ['PATH']}", FAKE_GCLOUD_DIR=str(d),
                   TLV_POLL_SECONDS="0", TLV_SETTLE_SECONDS="0", TMPDIR=str(tmp_path))
        return subprocess.run(["bash", str(ROOT / "launch" / "tpu_pod.sh"), "--zone", "z", "--config", "c.py",
                               "--workdir", "gs://b/run", "--log-dir", str(tmp_path / "logs"), *args],
                              capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)

    def calls(*words: str) -> list[list[str]]:
        """The `gcloud compute tpus KIND VERB` calls matching `KIND VERB` or `VERB`."""
        out = [json.loads(line) for line in (d / "calls.jsonl").read_text().splitlines()]
        n = len(words)
        return [c for c in out if list(words) in (c[2:2 + n], c[3:3 + n])]

    return SimpleNamespace(launch=launch, calls=calls)


def train_commands(fake) -> list[list[str]]:
    return [shlex.split(c[c.index("--command") + 1]) for c in fake.calls("ssh") if " train " in c[-1]]


QUEUED = ["--name", "q1", "--type", "v5p-16", "--num-slices", "2", "--spot"]
VM = ["--name", "vm1", "--type", "v6e-8", "--spot"]


@pytest.mark.parametrize("args, kind, up", [(QUEUED, "queued-resources", "ACTIVE"), (VM, "tpu-vm", "READY")])
def test_preempted_once_restarts_once_and_resumes_from_the_checkpoint(fake, args, kind, up):
    name = args[1]
    r = fake.launch({"up": up, "steps": [100, 200], "attempts": [
        # the TPU goes away mid-run: one worker got SIGTERM and saved, the other never reported
        {"output": ["step 150 loss 1.0"], "workers": {"w0": 143}, "ssh_rc": 255, "then": "PREEMPTED"},
        {"output": ["resumed from step 200 in gs://b/run/checkpoints"], "workers": {"w0": 0, "w1": 0}},
    ]}, *args, "--restart-on-preemption", "--delete-when-done")
    assert r.returncode == 0, r.stderr
    what = "queued resource" if kind == "queued-resources" else "TPU"
    assert r.stderr.count("restart ") == 1
    assert (f"restart 1/10 ({what} {name} is PREEMPTED): resuming from step 200, the latest checkpoint in "
            f"gs://b/run/checkpoints") in r.stderr
    assert "attempt 2 resumed from step 200" in r.stderr
    assert f"{what} {name} is PREEMPTED: deleting and recreating it" in r.stderr
    assert len(fake.calls(kind, "create")) == 2  # the first, and the one replacing the preempted TPU
    assert len(fake.calls(kind, "delete")) == 2  # the preempted one, and the finished one (--delete-when-done)
    attempts = train_commands(fake)
    assert [t[t.index("--logs-to") + 1] for t in attempts] == [
        "gs://b/run/logs/tpu_pod/attempt-1", "gs://b/run/logs/tpu_pod/attempt-2"]
    assert attempts[0] == attempts[1][:4] + attempts[0][4:]  # the same trainer command both times
    assert "still up and billed" not in r.stderr


def test_clean_finish_is_not_restarted_and_the_tpu_stays_up(fake):
    r = fake.launch({"up": "ACTIVE", "attempts": [{"workers": {"w0": 0, "w1": 0, "w2": 0, "w3": 0}}]},
                    *QUEUED, "--restart-on-preemption")
    assert r.returncode == 0, r.stderr
    assert len(train_commands(fake)) == 1 and "restart" not in r.stderr
    assert not fake.calls("queued-resources", "delete")
    assert ("queued resource q1 is still up and billed until deleted: gcloud compute tpus queued-resources delete "
            "q1 --zone z --force") in r.stderr


@pytest.mark.parametrize("rc, what", [(1, "failed"), (2, "refused its command line"), (3, "diverged")])
def test_a_run_that_fails_on_its_own_is_not_restarted(fake, rc, what):
    r = fake.launch({"up": "ACTIVE", "attempts": [
        {"output": ["error: unknown config key"], "workers": {"w0": rc, "w1": rc}, "ssh_rc": 1}]},
        *QUEUED, "--restart-on-preemption", "--delete-when-done")
    assert r.returncode == rc
    assert f"the trainer failed (exit {rc}" in r.stderr and what in r.stderr and "not restarting" in r.stderr
    assert len(train_commands(fake)) == 1 and "restart " not in r.stderr
    assert not fake.calls("queued-resources", "delete")  # kept for a look; the cost note says how to delete it
    assert "still up and billed" in r.stderr


def test_sigterm_while_the_tpu_stays_up_is_a_stop_not_a_preemption(fake):
    r = fake.launch({"up": "ACTIVE", "attempts": [{"workers": {"w0": 143, "w1": 143}, "ssh_rc": 1}]},
                    *QUEUED, "--restart-on-preemption")
    assert r.returncode == 143 and "stopped by a signal (exit 143)" in r.stderr
    assert len(train_commands(fake)) == 1


def test_a_dead_worker_on_a_running_tpu_reruns_without_recreating(fake):
    r = fake.launch({"up": "ACTIVE", "steps": [40], "attempts": [
        {"workers": {"w0": 137, "w1": 1}, "ssh_rc": 1},
        {"output": ["resumed from step 40 in gs://b/run/checkpoints"], "workers": {"w0": 0, "w1": 0}},
    ]}, *QUEUED, "--restart-on-preemption", existing="ACTIVE")
    assert r.returncode == 0, r.stderr
    assert "restart 1/10 (a worker ended with status 137): resuming from step 40" in r.stderr
    assert not fake.calls("queued-resources", "create") and not fake.calls("queued-resources", "delete")
    assert len(train_commands(fake)) == 2


def test_waits_for_a_queued_resource_to_become_active(fake):
    r = fake.launch({"up": "ACTIVE", "after_create": ["WAITING_FOR_RESOURCES", "PROVISIONING", "ACTIVE"],
                     "attempts": [{"workers": {"w0": 0}}]}, *QUEUED)
    assert r.returncode == 0, r.stderr
    assert "queued resource q1 is WAITING_FOR_RESOURCES: waiting" in r.stderr
    assert "queued resource q1 is PROVISIONING: waiting" in r.stderr
    assert train_commands(fake)


def test_without_the_flag_a_preemption_ends_the_launcher(fake):
    r = fake.launch({"up": "READY", "attempts": [{"workers": {}, "ssh_rc": 255, "then": "PREEMPTED"}]}, *VM)
    assert r.returncode == 255
    assert "TPU vm1 is PREEMPTED; rerun the same command to resume (or pass --restart-on-preemption)" in r.stderr
    assert len(train_commands(fake)) == 1


def test_restarts_are_capped(fake):
    preempted = {"workers": {}, "ssh_rc": 255, "then": "PREEMPTED"}
    r = fake.launch({"up": "READY", "steps": [], "attempts": [preempted, preempted, preempted]},
                    *VM, "--restart-on-preemption", "--max-restarts", "1")
    assert r.returncode == 1
    assert "restart 1/1 (TPU vm1 is PREEMPTED): resuming from step none" in r.stderr
    assert "TPU vm1 is PREEMPTED; gave up after 1 restart(s)" in r.stderr
    assert len(train_commands(fake)) == 2


def test_reuses_a_running_tpu(fake):
    r = fake.launch({"up": "READY", "attempts": [{"workers": {"w0": 0}}]}, *VM, existing="READY")
    assert r.returncode == 0, r.stderr
    assert "TPU vm1 is READY" in r.stderr and not fake.calls("tpu-vm", "create")


def test_a_preemption_the_state_shows_late_is_still_a_preemption(fake):
    # SIGTERM reached one trainer (it saved), its peer failed on the lost collective, the API still says ACTIVE
    r = fake.launch({"up": "ACTIVE", "steps": [300], "attempts": [
        {"workers": {"w0": 143, "w1": 1}, "ssh_rc": 1, "then": ["ACTIVE", "SUSPENDED"]},
        {"output": ["resumed from step 300 in gs://b/run/checkpoints"], "workers": {"w0": 0, "w1": 0}},
    ]}, *QUEUED, "--restart-on-preemption")
    assert r.returncode == 0, r.stderr
    assert "restart 1/10 (queued resource q1 is SUSPENDED): resuming from step 300" in r.stderr
    assert "attempt 2 resumed from step 300" in r.stderr
    assert len(fake.calls("queued-resources", "create")) == 2


def test_a_failed_setup_on_a_running_tpu_stops(fake):
    r = fake.launch({"up": "READY", "setup_rc": 1, "attempts": []}, *VM, "--restart-on-preemption")
    assert r.returncode == 1
    assert "setting up the workers failed (see above) while TPU vm1 is up" in r.stderr
    assert not train_commands(fake)
