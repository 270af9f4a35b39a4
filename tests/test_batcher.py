"""batcher: concurrent requests share forward passes, and a small one does not wait for a big one."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import EDGE_CASES, FILLER, LABEL_CONFIG, PERSON, PLACE, SEQ_LEN, cluener_texts, tasks_for


class Counting:
    """An engine that counts its calls and the inputs in them."""

    def __init__(self, engine, fail_when=None):
        self.engine, self.calls, self.shapes, self.fail_when = engine, [], [], fail_when
        self.max_batch_tokens = getattr(engine, "max_batch_tokens", None)

    def __call__(self, arrays):
        self.calls.append(arrays["input_ids"].shape[0])
        self.shapes.append(arrays["input_ids"].shape)
        if self.fail_when and self.fail_when(arrays):
            raise RuntimeError("boom")
        return self.engine(arrays)


def make(model_dir, batch_wait_ms=None, batch_size=8, fail_when=None, max_seq_len=SEQ_LEN):
    import uie.engine
    import uie.predictor

    engine = Counting(uie.engine.load_engine(model_dir, "paddle-inference", export=True), fail_when)
    return uie.predictor.UIEPredictor.from_dir(model_dir, engine=engine, max_seq_len=max_seq_len,
                                           batch_size=batch_size, batch_wait_ms=batch_wait_ms), engine


def same(a, b):
    """Same answers, query by query: as many, the same spans; scores equal but for float
    rounding (a row's padding differs by batch)."""
    return len(a) == len(b) and all(len(xs) == len(ys) for xs, ys in zip(a, b)) and all(
        x.keys() == y.keys() and all(
            [(s.start, s.end) for s in x[p]] == [(s.start, s.end) for s in y[p]]
            and all(abs(s.score - t.score) < 1e-6 for s, t in zip(x[p], y[p])) for p in x)
        for xs, ys in zip(a, b) for x, y in zip(xs, ys))


def gold(cases):
    """What the fixture model was trained to answer for ``cases``: {prompt: [(start, end)]}."""
    return [{p: sorted((s, e) for lab, s, e in spans if lab == p) for p in (PERSON, PLACE)}
            for _, spans in cases]


def offsets(found):
    return [{p: [(s.start, s.end) for s in spans] for p, spans in res.items()} for res in found]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, trained_model):
    import shutil

    path = tmp_path_factory.mktemp("batcher") / "model"
    shutil.copytree(trained_model, path)
    return path


def test_concurrent_requests_share_batches_and_get_their_own_answers(model_dir):
    queries = [[(text, [PERSON, PLACE])] for text, _ in EDGE_CASES] * 4
    alone, _ = make(model_dir)
    expected = [alone.extract(q) for q in queries]
    assert [offsets(e) for e in expected] == [gold([c]) for c in EDGE_CASES] * 4   # the reference knows them
    batched, engine = make(model_dir, batch_wait_ms=50)
    with ThreadPoolExecutor(max_workers=len(queries)) as pool:
        got = list(pool.map(batched.extract, queries))
    assert len(got) == len(expected) and same(got, expected)
    n_inputs = sum(len(alone.build_inputs(q)[0]) for q in queries)
    assert sum(engine.calls) == n_inputs
    assert len(engine.calls) < len(queries), f"no request shared a batch: {engine.calls}"
    assert max(engine.calls) <= 8
    batched.close()


def test_a_small_request_does_not_wait_for_a_big_one(model_dir):
    predictor, engine = make(model_dir, batch_wait_ms=1, batch_size=4)
    big = [(t, [PERSON, PLACE]) for t in cluener_texts(1000)]
    finished = {}

    def run(name, queries):
        predictor.extract(queries)
        finished[name] = time.perf_counter()

    thread = threading.Thread(target=run, args=("big", big))
    thread.start()
    while len(engine.calls) < 5:            # the big request is being predicted
        time.sleep(0.01)
    started = time.perf_counter()
    run("small", [(EDGE_CASES[0][0], [PERSON, PLACE])])
    assert "big" not in finished, "the big request ended before the small one was sent"
    thread.join()
    assert finished["small"] < finished["big"]
    print(f"\nsmall request answered in {finished['small'] - started:.2f}s, "
          f"the big one {finished['big'] - started:.2f}s after it was sent")
    predictor.close()


def test_a_failing_pass_fails_its_callers_only(model_dir):
    predictor, engine = make(model_dir, batch_wait_ms=0, fail_when=lambda a: a["input_ids"].shape[1] > 40)
    reference, _ = make(model_dir)                               # no batcher, no failure
    with pytest.raises(RuntimeError, match="boom"):
        predictor.extract([(EDGE_CASES[5][0], [PERSON])])        # long: windows of 48 tokens
    failed = len(engine.calls)
    # the batching thread lives on: the next callers (short texts) get their own answers,
    # those of the same model without the batcher, the spans it was trained on
    short = [(text, [PERSON, PLACE]) for text, _ in EDGE_CASES[:5]]
    got = predictor.extract(short)
    assert len(engine.calls) > failed and all(width <= 40 for _, width in engine.shapes[failed:])
    expected = reference.extract(short)
    assert same([got], [expected])
    assert offsets(got) == gold(EDGE_CASES[:5])
    predictor.close()


@pytest.mark.parametrize("batch_wait_ms", [None, 1])
def test_batches_hold_at_most_the_engines_token_budget(model_dir, batch_wait_ms):
    """Long inputs run a few at a time (memory), short ones BATCH_SIZE at a time (speed)."""
    predictor, engine = make(model_dir, batch_wait_ms=batch_wait_ms, batch_size=16, max_seq_len=512)
    assert engine.max_batch_tokens == 1024
    long_text = "".join(cluener_texts(40))
    predictor.extract([(long_text, [PERSON, PLACE])] + [(t, [PERSON]) for t in cluener_texts(40)])
    assert all(rows == 1 or rows * width <= 1024 for rows, width in engine.shapes)
    assert max(width for _, width in engine.shapes) > 300 and max(rows for rows, _ in engine.shapes) == 16
    predictor.close()


def test_a_one_task_request_is_answered_during_a_big_one_on_gunicorn(gunicorn, scratch_small):
    """Paddle Inference on the CPU bounds a batch's padded tokens: an annotator's one-task
    request still gets a row in the next batch, instead of waiting for a whole
    "Retrieve predictions" of long texts (whose 512-token windows alone fill every batch).
    The model is untrained (a trained scratch model is served with its short training windows):
    what matters is when the answers come, and that they are the same."""
    import requests

    server = gunicorn(UIE_MODEL=str(scratch_small), MAX_SEQ_LEN="512", THREADS="4",
                      ANSWER_CACHE="0")   # every request runs the model
    assert requests.get(server.url + "/health", timeout=10).json()["model"]["engine"] == "paddle-inference"
    text = (FILLER * 80)[:1500]
    big = {"tasks": [{"id": i, "data": {"text": f"{i}{text}"}} for i in range(60)], "label_config": LABEL_CONFIG}
    small = {"tasks": tasks_for(EDGE_CASES[:1]), "label_config": LABEL_CONFIG}

    def post(body):
        started = time.perf_counter()
        reply = requests.post(server.url + "/predict", json=body, timeout=300)
        assert reply.status_code == 200, reply.text
        return reply.json()["results"], time.perf_counter() - started

    expected, _ = post(small)
    _, alone = post(big)                     # the big one alone (and every shape's kernels built)
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(post, big)
        time.sleep(alone / 5)                # well into it
        latencies = []
        while not running.done() and len(latencies) < 5:
            results, seconds = post(small)
            assert results == expected
            latencies.append(seconds)
        big_seconds = running.result()[1]
    assert len(latencies) >= 2, f"the big request ({big_seconds:.1f}s) ended before 2 small ones ran"
    print(f"\nbig request {big_seconds:.2f}s (alone {alone:.2f}s); one-task requests during it: "
          + ", ".join(f"{s:.3f}s" for s in latencies))
    assert max(latencies) < alone / 4, (latencies, alone)


def test_a_failure_while_forming_a_batch_fails_its_callers_instead_of_hanging_them():
    """An error in the batching thread outside the forward pass (here the engine's token count)
    reaches every waiting caller; the thread lives on and answers the next ones."""
    import numpy as np

    from uie.batcher import Batcher

    class Input:
        def __init__(self, n):
            self.ids = list(range(n))

    broken = threading.Event()
    broken.set()

    def batch_tokens(rows, width):
        if broken.is_set():
            raise TypeError("cannot count")
        return rows * width

    def forward(inputs):
        width = max(len(x.ids) for x in inputs)
        rows = np.array([[len(x.ids)] * width for x in inputs], dtype="float32")
        return rows, -rows

    batcher = Batcher(forward, batch_size=4, wait_ms=0, max_tokens=100, batch_tokens=batch_tokens)
    result = []
    caller = threading.Thread(target=lambda: result.append(_outcome(batcher.run, [Input(3), Input(5)])))
    caller.start()
    caller.join(timeout=30)
    assert not caller.is_alive(), "the caller was left waiting"
    assert isinstance(result[0], TypeError)
    broken.clear()
    (s1, e1), (s2, e2) = batcher.run([Input(3), Input(5)])
    assert list(s1) == [3, 3, 3] and list(e2) == [-5] * 5
    batcher.close()


def _outcome(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:   # noqa: BLE001
        return exc


class _Ids:
    def __init__(self, n):
        self.ids = list(range(n))


def _echo_forward(inputs):
    import numpy as np

    width = max(len(x.ids) for x in inputs)
    rows = np.array([[len(x.ids)] * width for x in inputs], dtype="float32")
    return rows, -rows


def _timed_run(batcher, inputs) -> float:
    started = time.monotonic()
    batcher.run(inputs)
    return time.monotonic() - started


def test_a_request_that_fills_a_batch_by_its_tokens_does_not_wait_for_others():
    """One long task (an interactive request: few inputs, many tokens) fills the batch's token
    budget alone: nobody else could join it, so it runs without the batching wait, while a
    request that leaves room still waits for company."""
    from uie.batcher import Batcher

    batcher = Batcher(_echo_forward, batch_size=16, wait_ms=1500, max_tokens=100)
    try:
        assert _timed_run(batcher, [_Ids(50), _Ids(30)]) < 0.5      # 2 × 50 padded: full
        assert _timed_run(batcher, [_Ids(120)]) < 0.5               # over the budget alone
        assert _timed_run(batcher, [_Ids(20), _Ids(20)]) >= 1.4     # 40 tokens: room left
    finally:
        batcher.close()
