"""Shared pieces of the benchmarks: paths, data, model shapes, a gunicorn server, an RQ worker, statistics.

Importing this module sets HOME and PPNLP_HOME to ``bench/work/home`` (as
tests/conftest.py does) before Paddle or PaddleNLP are imported, so nothing
is written to the real home directory.
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
# CLUENER2020's full training split (10,748 sentences), which the repository does not ship:
# CLUENER_TRAIN or ``--cluener`` (bench/run.py), else data/cluener/train.json in the checkout.
CLUENER_DEFAULT = REPO / "data" / "cluener" / "train.json"
CLUENER = Path(os.environ.get("CLUENER_TRAIN") or CLUENER_DEFAULT)
WORK = BENCH / "work"
HOME = WORK / "home"

HOME.mkdir(parents=True, exist_ok=True)
os.environ["HOME"] = str(HOME)
os.environ["PPNLP_HOME"] = str(HOME / "ppnlp")
os.environ.pop("LABEL_STUDIO_URL", None)
os.environ.pop("LABEL_STUDIO_API_KEY", None)
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from harness import gunicorn_process  # noqa: E402  (the tests' gunicorn process, harness/)
from harness.rq_worker import RQWorker  # noqa: E402,F401  (bench/training.py starts workers)

# The tutorial's seven labels (Label Studio's UIE example), used as UIE prompts.
LABELS = ["地名", "人名", "组织机构", "时间", "产品", "价格", "天气"]
LABEL_CONFIG = ('<View><Labels name="label" toName="text">'
                + "".join(f'<Label value="{v}"/>' for v in LABELS)
                + '</Labels><Text name="text" value="$text"/></View>')
# The same config with three relations (README's example: Taskflow's schema
# {"组织机构": ["创始人", "总部地点"], "人名": ["出生地"]}), each asked of the regions of its
# subject label: (value, subject_labels).
RELATIONS = [("创始人", "组织机构"), ("总部地点", "组织机构"), ("出生地", "人名")]
RELATION_CONFIG = LABEL_CONFIG.replace("</View>", "<Relations>" + "".join(
    f'<Relation value="{v}" subject_labels="{s}"/>' for v, s in RELATIONS) + "</Relations></View>")

# CLUENER's ten labels as Chinese UIE prompts (learning curves, training jobs).
CLUENER_PROMPTS = {"address": "地址", "book": "书名", "company": "公司", "game": "游戏",
                   "government": "政府", "movie": "电影", "name": "人名",
                   "organization": "组织机构", "position": "职位", "scene": "景点"}
CLUENER_CONFIG = ('<View><Labels name="label" toName="text">'
                  + "".join(f'<Label value="{v}"/>' for v in CLUENER_PROMPTS.values())
                  + '</Labels><Text name="text" value="$text"/></View>')
# CLUENER labels mapped onto the tutorial's prompts (for a model that answers them).
TUTORIAL_MAP = {"address": "地名", "scene": "地名", "name": "人名", "organization": "组织机构",
                "company": "组织机构", "government": "组织机构", "game": "产品", "book": "产品",
                "movie": "产品"}

# uie-base and uie-nano architectures (random weights, built-in char vocabulary).
SHAPES = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072),
    "nano": dict(hidden_size=312, num_hidden_layers=4, num_attention_heads=12,
                 intermediate_size=1248),
}


# --------------------------------------------------------------------------
# data

def use_cluener(path=None) -> Path:
    """Read CLUENER from ``path`` (else CLUENER_TRAIN, else the default); exit with a message
    that says where to put it when the file is not there."""
    global CLUENER
    CLUENER = Path(path or CLUENER).expanduser()
    if not CLUENER.is_file():
        sys.exit(f"bench: CLUENER2020's train.json is not at {CLUENER}.\n"
                 "The benchmarks train and measure on all of it (10,748 sentences); the repository ships only "
                 "the tests' 1,000-line sample.\nGet train.json from the CLUENER2020 release "
                 "(github.com/CLUEbenchmark/CLUENER2020, cluener_public.zip), then put it at "
                 f"{CLUENER_DEFAULT} or pass --cluener PATH (or set CLUENER_TRAIN=PATH).")
    return CLUENER


def cluener(limit=None) -> list[dict]:
    """CLUENER sentences: ``{"text", "spans": [(label, start, end_exclusive)]}``."""
    out = []
    with open(CLUENER, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            spans = []
            for label, words in (row.get("label") or {}).items():
                for word, places in words.items():
                    for s, e in places:   # CLUENER offsets are inclusive
                        assert row["text"][s:e + 1] == word, (row["text"], word, s, e)
                        spans.append((label, s, e + 1))
            out.append({"text": row["text"], "spans": sorted(spans, key=lambda x: (x[1], x[2]))})
            if limit and len(out) >= limit:
                break
    return out


def bench_texts(n=256) -> list[str]:
    """The first ``n`` CLUENER sentences (the throughput benchmark's texts)."""
    return [s["text"] for s in cluener(n)]


def texts_of_length(n_texts, length=100, offset=1000) -> list[str]:
    """``n_texts`` distinct texts of exactly ``length`` characters (CLUENER sentences joined)."""
    sentences = [s["text"] for s in cluener()][offset:]
    out, i = [], 0
    while len(out) < n_texts:
        text = ""
        while len(text) < length:
            text += sentences[i % len(sentences)]
            i += 1
        out.append(text[:length])
    return out


def uie_examples(sentences, prompts=CLUENER_PROMPTS, negatives=None, seed=0) -> list[dict]:
    """One UIE example per (sentence, prompt), empty ones included (they teach the prompt).

    ``negatives``: keep at most this many empty prompts per sentence (random), all if None.
    """
    out, rng = [], random.Random(seed)
    for s in sentences:
        by_prompt = {p: [] for p in dict.fromkeys(prompts.values())}
        for label, start, end in s["spans"]:
            if label in prompts:
                by_prompt[prompts[label]].append((start, end))
        if negatives is not None:
            empty = [p for p, spans in by_prompt.items() if not spans]
            drop = set(rng.sample(empty, max(0, len(empty) - negatives)))
            by_prompt = {p: v for p, v in by_prompt.items() if p not in drop}
        for prompt, spans in by_prompt.items():
            out.append({"content": s["text"], "prompt": prompt,
                        "result_list": [{"text": s["text"][a:b], "start": a, "end": b}
                                        for a, b in sorted(set(spans))]})
    return out


def split(sentences, test_fraction=0.1, seed=0):
    """A fixed shuffled split: (train, test)."""
    order = list(range(len(sentences)))
    random.Random(seed).shuffle(order)
    n_test = int(round(len(order) * test_fraction))
    return [sentences[k] for k in order[n_test:]], [sentences[k] for k in order[:n_test]]


def ls_task(task_id, sentence, prompts=CLUENER_PROMPTS):
    """A Label Studio task with one annotation holding the sentence's gold spans."""
    result = [{"from_name": "label", "to_name": "text", "type": "labels",
               "value": {"start": a, "end": b, "text": sentence["text"][a:b], "labels": [prompts[lab]]}}
              for lab, a, b in sentence["spans"] if lab in prompts]
    annotation = {"id": task_id, "result": result, "was_cancelled": False, "ground_truth": False,
                  "task": task_id, "project": 1, "completed_by": 1}
    return {"id": task_id, "data": {"text": sentence["text"]}}, annotation


# --------------------------------------------------------------------------
# models

def model_dir(name, **shape) -> Path:
    """``bench/work/models/<name>``, built once (random weights, fixed seed).

    It stands in for the pretrained model of that shape, so it is not marked as
    a scratch model: finetune.py and the server treat it as they would uie-nano
    or uie-base (pretrained defaults, no auxiliary tagging pass).
    """
    import uie.checkpoint

    path = WORK / "models" / name
    if not uie.checkpoint.is_model_dir(path):
        uie.checkpoint.build_scratch(path, **shape)
    cfg = path / "tokenizer_config.json"
    config = json.loads(cfg.read_text(encoding="utf-8"))
    if config.pop("vocab_kind", None) is not None:
        cfg.write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


# --------------------------------------------------------------------------
# gunicorn, as `make run` starts it

class Gunicorn(gunicorn_process.Gunicorn):
    """The tests' gunicorn process (harness/gunicorn_process.py), with bench defaults
    (its own MODEL_DIR under work/serve, quiet logs) and memory readings."""

    def __init__(self, env, log_path, model_root=None):
        env = dict(env)
        env.setdefault("MODEL_DIR", str(model_root or (WORK / "serve" / f"models-{time.time_ns()}")))
        env.setdefault("LOG_LEVEL", "WARNING")
        super().__init__(env, log_path)

    def wait(self, timeout=300):
        return super().wait(timeout)

    def workers(self) -> list[int]:
        import psutil

        return [c.pid for c in psutil.Process(self.proc.pid).children()]

    def memory(self) -> dict:
        """Peak and current resident memory (MiB) of the master and each worker (VmHWM, VmRSS)."""
        def read(pid):
            fields = {}
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key in ("VmHWM", "VmRSS"):
                        fields[key] = int(value.split()[0]) / 1024
            return fields

        master = read(self.proc.pid)
        workers = [read(pid) for pid in self.workers()]
        return {"master_peak_mib": round(master["VmHWM"], 1),
                "worker_peak_mib": [round(w["VmHWM"], 1) for w in workers],
                "worker_rss_mib": [round(w["VmRSS"], 1) for w in workers],
                "total_peak_mib": round(master["VmHWM"] + sum(w["VmHWM"] for w in workers), 1)}


def post(url, body, timeout=1800):
    import requests

    reply = requests.post(url, json=body, timeout=timeout)
    if reply.status_code >= 300:
        raise RuntimeError(f"POST {url}: {reply.status_code} {reply.text[:500]}")
    return reply.json()


# --------------------------------------------------------------------------
# statistics and machine

def median(values):
    return statistics.median(values)


def percentile(values, q):
    """Linear-interpolated percentile (q in 0..100)."""
    v = sorted(values)
    if not v:
        return float("nan")
    k = (len(v) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def machine() -> dict:
    import paddle
    import paddlenlp

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    except (ValueError, OSError):
        mem_gib = float("nan")
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "memory_gib": round(mem_gib, 1),
            "os": platform.platform(), "python": platform.python_version(),
            "paddlepaddle": paddle.__version__, "paddlenlp": paddlenlp.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def log(*args):
    print(time.strftime("[%H:%M:%S]"), *args, flush=True)
