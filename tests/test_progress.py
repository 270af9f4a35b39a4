"""Training progress you can watch: a job's phase, step of the total, best dev F1 and ETA in its
progress.json (written by the job's processes, at most about once a second), merged into GET /jobs
and /metrics; the scripts' progress bars on a terminal, and no bar to a pipe."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

from helpers import (CLUENER_CONFIG, EDGE_CASES, LABEL_CONFIG, REPO, annotated_tasks, cluener_tasks,
                     uie_examples)
from test_metrics import parse

ORDER = ["gathering", "converting", "training", "exporting", "evaluating", "promoting"]


def test_progress_is_written_atomically_at_most_once_a_second(tmp_path):
    from service.job_records import progress_of
    from train_job import Progress, read_progress

    progress = Progress(tmp_path, interval=1.0)
    progress.phase("training", total=1000)
    started = time.time()
    for step in range(1, 501):
        progress.step(step, 1000, best_f1=0.25 if step > 100 else None)
    assert time.time() - started < 1.0
    written = read_progress(tmp_path)
    assert (written["phase"], written["step"], written["total"]) == ("training", 0, 1000)  # throttled
    time.sleep(1.0)
    progress.step(501, 1000)
    written = read_progress(tmp_path)
    assert (written["step"], written["best_dev_f1"]) == (501, 0.25)
    assert 0 < written["eta_seconds"] <= (written["updated"] - written["phase_started"]) / 501 * 499 + 0.1
    progress.step(1000, 1000)                           # the last step is written at once
    assert read_progress(tmp_path)["step"] == 1000 and read_progress(tmp_path)["eta_seconds"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["progress.json"]       # no temporary left
    shown = progress_of(dict(written, updated=100.0, eta_seconds=30.0), now=110.0)
    assert shown["eta_seconds"] == 20.0 and shown["ratio"] == 0.501 and shown["phase"] == "training"


def test_a_job_reports_every_phase_its_steps_and_best_dev_f1(tmp_path, scratch_small):
    """``train_job.train`` in this process, every write of its progress file recorded."""
    import train_job

    class Recorded(train_job.Progress):
        def _write(self):
            super()._write()
            writes.append(train_job.read_progress(tmp_path))

    writes = []
    spec = train_job.JobSpec(project="1", label_config=LABEL_CONFIG, tasks=annotated_tasks(EDGE_CASES),
                             source="test", model_path=str(scratch_small), model_version="base",
                             num_epochs=3, max_seq_len=64)
    result = train_job.train(spec, tmp_path / "work", Recorded(tmp_path, interval=0))
    phases = list(dict.fromkeys(w["phase"] for w in writes))
    assert phases == ["converting", "training", "exporting", "evaluating"]
    training = [w for w in writes if w["phase"] == "training" and w["step"]]
    total = training[-1]["total"]
    assert [w["step"] for w in training] == sorted(w["step"] for w in training) and total >= 3
    assert training[-1]["step"] == total and all(w["eta_seconds"] is not None for w in training)
    assert training[0]["best_dev_f1"] is None and training[-1]["best_dev_f1"] is not None
    assert set(result["per_label"]["labels"]) == set(result["previous_per_label"]["labels"]) == {"人名", "地名"}
    evaluating = [w for w in writes if w["phase"] == "evaluating"]
    assert evaluating[-1]["step"] == evaluating[-1]["total"] == 2 * result["metrics"]["examples"]
    assert evaluating[-1]["best_dev_f1"] == training[-1]["best_dev_f1"]      # kept across phases


def watch(path: Path, seen: list, stop: threading.Event):
    """Every distinct progress.json the job's processes write, as read every 10 ms."""
    while not stop.is_set():
        try:
            written = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            written = None
        if written and (not seen or written != seen[-1]):
            seen.append(written)
        time.sleep(0.01)


def test_a_running_job_shows_its_progress_in_jobs_and_metrics(make_app, scratch_small):
    client = make_app(uie_model=str(scratch_small), train_epochs=40, train_max_seq_len=64).test_client()
    job = client.post("/train", json={"annotations": cluener_tasks(6), "project": "42.1",
                                      "label_config": CLUENER_CONFIG}).json["job"]
    job_dir = Path(client.get("/jobs?project=42").json["jobs"][0]["log"]).parent
    seen, stop = [], threading.Event()
    watcher = threading.Thread(target=watch, args=(job_dir / "progress.json", seen, stop), daemon=True)
    watcher.start()
    shown, scraped = [], []
    deadline = time.time() + 600
    while time.time() < deadline:
        [record] = client.get("/jobs?project=42").json["jobs"]
        if record["state"] in ("done", "failed"):
            break
        if record.get("progress"):
            shown.append(record["progress"])
            scraped.append(parse(client.get("/metrics").get_data(as_text=True)))
        time.sleep(0.2)
    time.sleep(0.1)
    stop.set()
    watcher.join()
    assert record["state"] == "done", record

    phases = list(dict.fromkeys(w["phase"] for w in seen))
    assert phases == [p for p in ORDER if p in phases], phases
    assert {"gathering", "training", "evaluating", "promoting"} <= set(phases), phases
    training = [w for w in seen if w["phase"] == "training"]
    seconds = training[-1]["updated"] - training[0]["updated"]
    assert len(training) <= seconds + 3, (len(training), seconds)          # about once a second

    during = [p for p in shown if p["phase"] == "training" and p["step"]]
    assert during, shown
    assert all(0 < p["step"] <= p["total"] and p["ratio"] == round(p["step"] / p["total"], 4)
               and p["eta_seconds"] >= 0 for p in during)
    assert any(p["best_dev_f1"] is not None for p in shown)
    key = ("uie_job_phase", (("phase", "training"), ("project", "42")))
    at_training = [s for s in scraped if s.get(key) == 1]
    assert at_training, [k for s in scraped for k in s if k[0].startswith("uie_job")]
    assert any(0 < s.get(("uie_job_progress_ratio", (("project", "42"),)), 0) <= 1
               and ("uie_job_eta_seconds", (("project", "42"),)) in s for s in at_training), \
        ([k for s in at_training for k in s if k[0].startswith("uie_job")], during)

    assert "progress" not in record
    after = parse(client.get("/metrics").get_data(as_text=True))
    assert not [k for k in after if k[0].startswith("uie_job_")]


def on_terminal(args, cwd) -> tuple[int, str, str]:
    """``(exit code, stderr as a terminal shows it, stdout)`` of a script whose stderr is a pty."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))    # 100 columns
    proc = subprocess.Popen(args, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=slave)
    os.close(slave)
    chunks = []

    def drain():
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)
    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    out = proc.stdout.read().decode()
    code = proc.wait(timeout=600)
    reader.join(timeout=10)
    os.close(master)
    return code, b"".join(chunks).decode(errors="replace"), out


def in_pipes(args, cwd) -> tuple[int, str, str]:
    done = subprocess.run(args, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=600)
    return done.returncode, done.stderr, done.stdout


BAR = re.compile(r"\d+%\|")


def test_the_scripts_show_a_progress_bar_on_a_terminal_only(tmp_path, trained_model, scratch_small):
    py = sys.executable
    (tmp_path / "test.txt").write_text("".join(json.dumps(ex, ensure_ascii=False) + "\n"
                                               for ex in uie_examples()), encoding="utf-8")
    doccano_file = tmp_path / "doccano.jsonl"
    doccano_file.write_text(json.dumps({"text": "张三在北京。", "entities": [
        {"label": "人名", "start_offset": 0, "end_offset": 2}], "relations": []}, ensure_ascii=False) + "\n",
        encoding="utf-8")
    runs = {
        "evaluate": [py, str(REPO / "evaluate.py"), "--model_path", str(trained_model), "--test_path",
                     str(tmp_path / "test.txt"), "--max_seq_len", "48", "--device", "cpu"],
        "doccano": [py, str(REPO / "doccano.py"), "--doccano_file", str(doccano_file), "--save_dir",
                    str(tmp_path / "data"), "--splits", "1", "0", "0"],
        "finetune": [py, str(REPO / "finetune.py"), "--train_path", str(tmp_path / "test.txt"), "--save_dir",
                     str(tmp_path / "ckpt"), "--model", str(scratch_small), "--num_epochs", "30",
                     "--max_seq_len", "48", "--device", "cpu", "--tagging_weight", "0"],
    }
    for name, args in runs.items():
        code, terminal, out = on_terminal(args, tmp_path)
        assert code == 0, (name, terminal)
        assert BAR.search(terminal), (name, terminal[-2000:])
        code, logged, piped_out = in_pipes(args, tmp_path)
        assert code == 0, (name, logged)
        assert not BAR.search(logged) and "\r" not in logged, (name, logged[-2000:])
        assert piped_out.splitlines()[0] == out.splitlines()[0], name
