"""The model class Label Studio talks to: ``setup``, ``predict``, ``fit``.

It has the shape of label-studio-ml's ``LabelStudioMLBase`` without depending
on it: one cheap instance per request, for one project and label config; the
heavy parts (loaded models, training jobs) live in the process-wide
``ModelStore`` and ``JobRunner`` it is given.

What a prediction costs is counted in model inputs: one per window of a text
and prompt (``UIEPredictor.count_inputs``), the relation and choices rounds' included. Past
``MAX_QUERIES_PER_REQUEST`` of them ``predict`` raises ``TooManyInputs`` (413)
before the model runs; and when given ``client_gone``, it runs the model in
pieces and stops (``ClientGone``) once the client has closed its connection.
"""

from __future__ import annotations

import hashlib
import logging

from werkzeug.exceptions import BadRequest, HTTPException, RequestEntityTooLarge

import interactive
from convert import TaskTextError, task_text
import choices
from label_config import Control, LabelConfigError, RelationLabel, parse_choices, parse_label_config, parse_relations
from relations import asked, build_queries, link_all
from service.model_store import LiveModel, ModelStore
from uie import answer_cache
from uie.predictor import Doubt, Stopped

log = logging.getLogger(__name__)
# Between two pieces of at most this many model inputs, predict looks whether the client is
# still there (when it is given ``client_gone``): about 6 s of uie-base on 2 CPU cores.
PIECE_INPUTS = 64


class TooManyInputs(RequestEntityTooLarge):
    """413: a ``/predict`` needs more model inputs than ``MAX_QUERIES_PER_REQUEST``."""


class ClientGone(HTTPException):
    """The client closed its connection: the prediction was stopped (nginx's 499; nobody
    reads the answer)."""

    code = 499
    description = "the client closed its connection; the prediction was stopped"


class UIEBackend:
    """UIE pre-annotation and training for one Label Studio project."""

    def __init__(self, store: ModelStore, project: str, label_config: str | None = None,
                 jobs=None):
        self.store = store
        self.settings = store.settings
        self.project = project
        self.label_config = label_config
        self.jobs = jobs
        self._controls = None
        self._relations = None
        self._live = None
        # set by the HTTP layer for a request it can watch: a function telling whether the
        # client has closed its connection (None: each round runs in one call)
        self.client_gone = None

    @property
    def controls(self) -> list[Control]:
        """The Labels→Text pairs of the label config (``LabelConfigError`` if none)."""
        if self._controls is None:
            self._controls = parse_label_config(self.label_config)
        return self._controls

    @property
    def relations(self) -> tuple[RelationLabel, ...]:
        """The ``<Relation>`` values of the label config (``()`` without ``<Relations>``)."""
        if self._relations is None:
            self._relations = parse_relations(self.label_config)
        return self._relations

    @property
    def live(self) -> LiveModel:
        """The model serving the project, asked of the store once per instance (per request)."""
        if self._live is None:
            self._live = self.store.live(self.project)
        return self._live

    # -- LabelStudioMLBase-like API ----------------------------------------
    def setup(self) -> str:
        """Validate the label config and return the version ``predict`` will stamp."""
        if self.label_config:
            self.controls  # noqa: B018  (raises on a config UIE cannot serve)
            self.relations  # noqa: B018
        return self.model_version

    @property
    def model_version(self) -> str:
        return self.live.version

    def predict(self, tasks: list[dict], context=None, **kwargs) -> list[dict]:
        """One prediction per task, in task order, also when nothing was found.

        One ``extract`` call finds the regions of every task; with ``<Relations>``,
        one more finds the relations between them (``relations.relation_round``); with
        ``<Choices>``, one more classifies the texts (``choices.py``, ``_add_choices``).
        Each round is counted first (``Cost.add``): ``TooManyInputs`` past
        ``MAX_QUERIES_PER_REQUEST`` model inputs, every round together, before the
        round runs. With ``client_gone`` set, a round of more than ``PIECE_INPUTS``
        inputs runs in pieces of about that many, and ``ClientGone`` stops it
        between two pieces once the client has gone.
        """
        live, relations = self.live, self.relations   # a bad config raises before the model runs
        where = self._texts(tasks)
        marked = self._marked(context, where, len(tasks))
        queries = [(text, c.prompts) for _, c, text in where]
        cost = Cost(self.settings.max_queries_per_request, live.predictor, len(tasks))
        cost.add(queries, "entity")
        extracted = self._extract(live, queries, cost) if where else []
        regions = [[] for _ in tasks]
        doubts = [Doubt() for _ in tasks]
        for (t, control, text), answer in zip(where, extracted):
            regions[t].extend(self._regions(control, text, answer))
            doubts[t] = doubts[t].add(doubt_of(answer))
        linkable = regions
        if marked is not None:
            regions[0], linkable = self._interactive(marked, where, regions[0])
        if relations:
            self._add_relations(live, relations, where, regions, cost, doubts, linkable, marked)
        self._add_choices(live, tasks, regions, cost, doubts)
        return [self._prediction(r, live, d) for r, d in zip(regions, doubts)]

    def fit(self, event: str, data: dict | None = None, **kwargs) -> dict:
        """Queue a training job for this project (never trains in the request)."""
        if self.jobs is None:
            raise RuntimeError("training is not available in this process")
        return self.jobs.trigger(self.project, reason=event, label_config=self.label_config,
                                 tasks=(data or {}).get("tasks"))

    # -- helpers ----------------------------------------------------------
    def _texts(self, tasks: list) -> list[tuple[int, Control, str]]:
        """``(task index, control, text)`` for each task and control with a text to query."""
        where = []
        for t, task in enumerate(tasks):
            for control in self.controls:
                text = self._task_text(task, control)
                if text is not None:
                    where.append((t, control, text))
        return where

    def _task_text(self, task, control: Control) -> str | None:
        """The text ``control`` labels (``convert.task_text``, as training reads it), or
        None, logged, for an empty prediction: no usable text, or longer than ``MAX_TEXT_CHARS``."""
        task_id = task.get("id") if isinstance(task, dict) else None
        try:
            text = task_text(task, control.data_key)
        except TaskTextError as exc:
            log.warning("task %s: %s; empty prediction", task_id, exc)
            return None
        if len(text) > self.settings.max_text_chars:
            log.warning("task %s: text of %d characters is longer than MAX_TEXT_CHARS=%d; "
                        "empty prediction", task_id, len(text), self.settings.max_text_chars)
            return None
        return text

    def text_of(self, task) -> str | None:
        """The text of ``task`` that the first ``<Labels>`` control labels, None without one (or
        past ``MAX_TEXT_CHARS``): what ``/predict`` remembers beside its suggestions, the
        unannotated texts a small scratch project's job learns LAC's names on."""
        try:
            text = task_text(task, self.controls[0].data_key)
        except (TaskTextError, LabelConfigError, IndexError):
            return None
        return text if len(text) <= self.settings.max_text_chars else None

    def _marked(self, context, where, n_tasks: int):
        """The annotator's regions of an interactive request (``interactive.read_context``)
        on the texts of the first task, or None; 400 for a context Label Studio never sends."""
        texts = {control: text for t, control, text in where if t == 0}
        try:
            return interactive.read_context(context, self.controls, n_tasks, texts.get)
        except interactive.ContextError as exc:
            raise BadRequest(str(exc)) from None

    @staticmethod
    def _interactive(marked, where, predicted: list[dict]) -> tuple[list[dict], list[list[dict]]]:
        """The first task's regions answering ``marked`` (``interactive.answer``, text by
        text), and, as ``linkable`` for the relation round, those plus the marked ones."""
        texts = {control.to_name: text for t, control, text in where if t == 0}
        regions, linkable = [], []
        for to_name, text in texts.items():
            mine = [r for r in predicted if r["to_name"] == to_name]
            returned, linked = interactive.answer(marked, to_name, text, mine, _copy_region)
            regions += returned
            linkable += linked
        return regions, [linkable]

    def _add_relations(self, live: LiveModel, relations, where, regions, cost, doubts, linkable,
                       marked=None):
        """The relation round: every text's relation prompts in one ``extract`` call (or
        its pieces), counted first; relations link ``linkable`` regions of the same task
        and ``<Text>`` (the returned ones, and in an interactive request the marked ones)."""
        texts = {}                      # (task, to_name) -> text, in request order
        for t, control, text in where:
            texts.setdefault((t, control.to_name), text)
        queries = build_queries([(text, [r for r in linkable[t] if r["to_name"] == to_name])
                                 for (t, to_name), text in texts.items()],
                                relations, self.settings.schema_lang)
        prompts = asked(queries)
        cost.add(prompts, "relation")
        answers = self._extract(live, prompts, cost) if prompts else []
        found, dropped = link_all(queries, answers)
        for (t, _), items in zip(texts, found):
            regions[t].extend(interactive.new_relations(marked, items) if marked and t == 0 else items)
        for (t, _), answer in zip([k for k, q in zip(texts, queries) if q.asks], answers):
            doubts[t] = doubts[t].add(doubt_of(answer))
        if dropped:
            log.debug("%d relation objects matched no predicted region; dropped", dropped)

    def _add_choices(self, live: LiveModel, tasks, regions, cost, doubts):
        """The choices round (``choices.py``): every task's ``<Choices>`` prompts in one
        ``extract`` call (or its pieces), counted first; one ``choices`` item per control,
        and the answers' ``Doubt`` added to their task's."""
        controls = parse_choices(self.label_config)
        where = [(t, c, text) for t, task in enumerate(tasks) for c in controls
                 if (text := self._task_text(task, c)) is not None]
        if not where:
            return
        queries = choices.build_queries(where)
        prompts = choices.asked(queries)
        cost.add(prompts, "choices")
        answers = self._extract(live, prompts, cost)
        for q, answer in zip(queries, answers):
            doubts[q.task] = doubts[q.task].add(doubt_of(answer))
        for t, item in choices.items(queries, answers):
            regions[t].append(item)

    def _extract(self, live: LiveModel, queries, cost: "Cost") -> list[dict]:
        """``live.predictor.extract(queries)``, the round ``cost`` counted last, for the
        (text, prompt) pairs the model has not answered lately (``uie.answer_cache``); with
        ``client_gone``, in pieces of about ``PIECE_INPUTS`` inputs, looking before each
        whether the client is still there."""
        inputs = cost.rounds[-1]
        predictor, gone = live.predictor, self.client_gone
        cache = answer_cache.cache_for(predictor, self.settings.answer_cache)   # asked before: not run again
        try:
            if gone is None or inputs <= PIECE_INPUTS:
                if gone is not None and gone():
                    raise Stopped(0, inputs)
                answers = cache.extract(predictor.extract, queries)
            else:
                answers = cache.extract(lambda qs: predictor.extract_in_pieces(qs, gone, PIECE_INPUTS),
                                        queries)
        except Stopped as exc:
            log.warning("project %s: the client closed its connection; prediction stopped "
                        "after %d of %d model inputs", self.project, cost.done + exc.done, cost.total)
            raise ClientGone() from None
        cost.done += inputs
        return answers

    @staticmethod
    def _regions(control: Control, text: str, by_prompt) -> list[dict]:
        """One region per (label, start, end), scored by the best of the label's prompts."""
        best = {}   # (label, start, end) -> score
        for prompt, spans in by_prompt.items():
            for label in control.labels_for(prompt):
                for span in spans:
                    key = (label, span.start, span.end)
                    best[key] = max(best.get(key, 0.0), span.score)
        ordered = sorted(best.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0]))
        return [_region(control, text, *key, score) for key, score in ordered]

    def _prediction(self, regions: list[dict], live: LiveModel, doubt: Doubt) -> dict:
        """The task's score (``TASK_SCORE``), from ``doubt`` (every label and relation
        prompt the model was asked on the task, ``uie.predictor.Doubt``): ``margin``, its
        smallest decision margin, or ``entropy``, 1 / (1 + its summed entropy); or the
        min or mean of the scores of the task's items (regions and relations)."""
        scores = [r["score"] for r in regions]
        mode = self.settings.task_score
        if mode == "margin":
            score = doubt.margin
        elif mode == "entropy":
            score = 1.0 / (1.0 + doubt.entropy)
        elif not scores:
            score = 0.0
        elif mode == "mean":
            score = sum(scores) / len(scores)
        else:
            score = min(scores)
        return {"result": regions, "score": round(score, 6), "model_version": live.version}


def _region(control: Control, text: str, label: str, start: int, end: int, score: float) -> dict:
    """A Label Studio ``labels`` region, with an id stable across predictions."""
    return _labels_item(control.from_name, control.to_name, text, label, start, end, score)


def _labels_item(from_name, to_name, text, label, start, end, score) -> dict:
    region_id = hashlib.sha1(f"{from_name}|{label}|{start}|{end}".encode()).hexdigest()[:10]
    return {"id": region_id, "from_name": from_name, "to_name": to_name, "type": "labels",
            "value": {"start": start, "end": end, "text": text[start:end], "labels": [label]},
            "score": round(score, 6)}


def _copy_region(region: dict, text: str, start: int, end: int) -> dict:
    """``region`` (an annotator's) at another occurrence ``start:end`` of its text."""
    return _labels_item(region["from_name"], region["to_name"], text, region["value"]["labels"][0],
                        start, end, region["score"])


def doubt_of(answer) -> Doubt:
    """The ``Doubt`` of all the prompts of an ``extract`` answer together."""
    total = Doubt()
    for doubt in getattr(answer, "doubt", {}).values():
        total = total.add(doubt)
    return total


class Cost:
    """A request's model inputs, counted round by round against ``MAX_QUERIES_PER_REQUEST``."""

    def __init__(self, limit: int, predictor, n_tasks: int):
        self.limit, self.predictor, self.n_tasks = limit, predictor, n_tasks
        self.rounds: list[int] = []
        self.names: list[str] = []
        self.total = 0          # inputs counted so far
        self.done = 0           # inputs of the rounds that ran

    def add(self, queries, what: str):
        """Count a round's inputs; ``TooManyInputs`` when the request would exceed the limit."""
        n = self.predictor.count_inputs(queries, limit=self.limit - self.total)
        self.rounds.append(n)
        self.names.append(what)
        self.total += n
        if self.total <= self.limit:
            return
        counted = " + ".join(f"{v} for the {k} round" for k, v in zip(self.names, self.rounds))
        raise TooManyInputs(
            f"{self.n_tasks} tasks need more than {self.limit} model inputs (one per window of "
            f"at most MAX_SEQ_LEN={self.predictor.max_seq_len} tokens of a text and prompt; counted so "
            f"far: {counted}); at most MAX_QUERIES_PER_REQUEST={self.limit}: send fewer tasks, "
            f"or shorter texts, at a time")
