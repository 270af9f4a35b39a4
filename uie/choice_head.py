"""The choice head of a scratch model: a text classifier for ``<Choices>`` beside the span tagger.

A scratch UIE answers a classification prompt (``prefix[option1,option2,...]``,
``choices.py``) poorly: on a CLUENER-derived "does the sentence name a person"
it scored below the majority class, where a pooled classifier on a BiGRU scored
best (``bench/notes.md``, *Choices on a scratch model*). This is that
classifier: character embeddings (Baidu LAC's when installed, as the span
tagger's), a bidirectional GRU over each prompt-free window of the text
(``[CLS] [SEP] content [SEP]``), max-pooled over the text's content tokens
(over all its windows), and a linear layer with one output per option of
every *control* it learned (a control: a classification prompt's prefix and
its set of options, in any order).

- A control whose training examples ever chose several options at once is
  ``multiple``: independent sigmoids, every option above the threshold is
  answered. Otherwise it is single: a softmax, the argmax answered (always one).
- ``finetune`` trains it for scratch models, in the same run and steps as the
  span tagger (``encode``, ``loss``), from the classification examples
  ``doccano.py`` builds for Choices; ``uie.predictor.UIEPredictor`` answers a
  classification prompt of a control it knows from it, as the UIE would: spans
  at the option's offsets in the prompt (PaddleNLP's negative offsets), the
  score the option's probability. Other prompts go to the UIE as before.

Files in a model directory: ``choice_head.json`` (controls and shape) and
``choice_head.pdparams`` (weights). Pretrained UIEs never get them (Taskflow
ignores them and answers from prompts). It runs in dygraph, like the tagger.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paddle

from uie.layer_files import load_state

CONFIG_FILE = "choice_head.json"
WEIGHTS_FILE = "choice_head.pdparams"
FILES = (CONFIG_FILE, WEIGHTS_FILE)
SHAPE = {"embedding_size": 128, "hidden_size": 128, "num_layers": 2, "dropout": 0.3}


class ChoiceHeadError(ValueError):
    """A choice head's files are missing, unreadable or do not fit each other."""


def parse_prompt(prompt: str) -> tuple[str, list[str]] | None:
    """``(prefix, [option])`` of a classification prompt, None for any other prompt."""
    from uie.tokenizer import prompt_options

    where = prompt_options(prompt)
    if not where:
        return None
    return prompt[: prompt.rfind("[")], [prompt[s:e] for s, e in where]


def option_offsets(prompt: str) -> list[tuple[int, int]]:
    """PaddleNLP's (negative) offsets of each option of a classification prompt, in its order."""
    from uie.tokenizer import prompt_options

    shift = len(prompt) + 1
    return [(s - shift, e - shift) for s, e in prompt_options(prompt)]


def _key(prefix: str, options) -> tuple[str, frozenset]:
    return prefix, frozenset(options)


class ChoiceHead(paddle.nn.Layer):
    """Character embeddings -> BiGRU -> max-pool over the text -> one logit per option."""

    def __init__(self, vocab_size: int, controls, embedding_size=128, hidden_size=128,
                 num_layers=2, dropout=0.3, embedding_start="random"):
        super().__init__()
        controls = [{"prefix": str(c["prefix"]), "options": [str(o) for o in c["options"]],
                     "multiple": bool(c["multiple"])} for c in controls]
        if not controls or any(not c["options"] or len(set(c["options"])) != len(c["options"])
                               for c in controls):
            raise ChoiceHeadError("a choice head needs controls, each with distinct options")
        self.controls = controls
        self.config = {"controls": controls, "vocab_size": int(vocab_size),
                       "embedding_size": embedding_size, "hidden_size": hidden_size,
                       "num_layers": num_layers, "dropout": dropout, "embedding_start": embedding_start}
        self.first = list(np.cumsum([0] + [len(c["options"]) for c in controls])[:-1].astype(int))
        self._index = {_key(c["prefix"], c["options"]): k for k, c in enumerate(controls)}
        self.embedding = paddle.nn.Embedding(vocab_size, embedding_size)
        self.dropout = paddle.nn.Dropout(dropout)
        self.gru = paddle.nn.GRU(embedding_size, hidden_size, num_layers=num_layers,
                                 direction="bidirect", dropout=dropout if num_layers > 1 else 0.0)
        self.out = paddle.nn.Linear(2 * hidden_size, sum(len(c["options"]) for c in controls))

    def find(self, prompt: str) -> tuple[int, list[int]] | None:
        """``(control, [its option index for each option of the prompt, in the prompt's
        order])`` for a classification prompt of a control it knows, else None."""
        parsed = parse_prompt(prompt)
        if parsed is None:
            return None
        k = self._index.get(_key(*parsed))
        if k is None or len(parsed[1]) != len(self.controls[k]["options"]):
            return None
        options = self.controls[k]["options"]
        return k, [options.index(o) for o in parsed[1]]

    def features(self, input_ids, lengths, content_mask):
        """``(rows, 2 * hidden)``: each input's GRU states max-pooled over its content tokens."""
        hidden, _ = self.gru(self.dropout(self.embedding(input_ids)), sequence_length=lengths)
        mask = content_mask.unsqueeze(-1)
        return paddle.max(hidden * mask - 1e4 * (1 - mask), axis=1)

    def forward(self, input_ids, lengths, content_mask, groups=None):
        """Logits ``(texts, options of all controls)``; ``groups`` lists each text's rows (its
        windows, pooled together), default one row a text."""
        feats = self.features(input_ids, lengths, content_mask)
        if groups is not None and any(len(g) != 1 for g in groups):
            feats = paddle.stack([paddle.max(paddle.gather(feats, paddle.to_tensor(g, dtype="int64")), axis=0)
                                  for g in groups])
        elif groups is not None:
            feats = paddle.gather(feats, paddle.to_tensor([g[0] for g in groups], dtype="int64"))
        return self.out(feats)

    def probabilities(self, logits: np.ndarray, control: int) -> np.ndarray:
        """The option probabilities of ``control`` from the logits of one text: softmax for a
        single-choice control, independent sigmoids for a multiple one."""
        z = np.asarray(logits[self.first[control]: self.first[control] + len(self.controls[control]["options"])],
                       dtype="float64")
        if self.controls[control]["multiple"]:
            return 1.0 / (1.0 + np.exp(-z))
        e = np.exp(z - z.max())
        return e / e.sum()


# --------------------------------------------------------------------------
# Inputs, training

@dataclass(frozen=True, slots=True)
class ChoiceInput:
    """One text to classify in training: its prompt-free windows and, for every control its
    examples ask, the indices of the options chosen."""

    windows: tuple
    targets: tuple[tuple[int, tuple[int, ...]], ...]

    @property
    def input(self):
        """Its longest window (what ``uie.train_inputs.batches`` buckets by)."""
        return max(self.windows, key=lambda x: len(x.ids))


def controls_of(examples, multiple_choice=()) -> tuple[list[dict], dict]:
    """The controls of the classification examples (in first-seen order, options in the
    order of the first example of each) and ``{content: {control: set of chosen options}}``.
    A control is ``multiple`` when its prompt is one of ``multiple_choice`` (any order of
    its options), or when some content has several options chosen."""
    controls, index, chosen = [], {}, {}
    for ex in examples:
        parsed = parse_prompt(ex["prompt"])
        if parsed is None:
            continue
        prefix, options = parsed
        if len(set(options)) != len(options):
            continue
        key = _key(prefix, options)
        if key not in index:
            index[key] = len(controls)
            controls.append({"prefix": prefix, "options": list(options), "multiple": False})
        k = index[key]
        offsets = dict(zip(option_offsets(ex["prompt"]), options))
        picked = chosen.setdefault(ex["content"], {}).setdefault(k, set())
        picked.update(o for r in ex["result_list"] if (o := offsets.get((r["start"], r["end"]))) is not None)
    declared = {_key(*parsed) for p in multiple_choice if (parsed := parse_prompt(p))}
    for k, control in enumerate(controls):
        control["multiple"] = _key(control["prefix"], control["options"]) in declared or any(
            len(by_control.get(k, ())) > 1 for by_control in chosen.values())
    return controls, chosen


def encode(examples, tokenizer, max_seq_len, controls, chosen) -> list[ChoiceInput]:
    """The training inputs of ``controls_of``'s result: each content once, every control asked
    of it with its chosen options (a control asked but nothing chosen: learnt only by a
    multiple control, all its sigmoids 0)."""
    from uie.tokenizer import encode_windows

    out = []
    for content, by_control in chosen.items():
        targets = tuple((k, tuple(sorted(controls[k]["options"].index(o) for o in picked)))
                        for k, picked in sorted(by_control.items())
                        if picked or controls[k]["multiple"])
        windows = encode_windows(tokenizer, [], tokenizer.tokenize(content)[0], max_seq_len)
        if targets and windows:
            out.append(ChoiceInput(tuple(windows), targets))
    return out


def batch_arrays(windows, pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(input_ids, lengths, content_mask)`` of a list of ``EncodedInput``."""
    from uie.tokenizer import pad_batch

    arrays = pad_batch(windows, pad_id)
    mask = np.zeros(arrays["input_ids"].shape, dtype="float32")
    for r, x in enumerate(windows):
        mask[r, x.content_start: x.content_start + x.n_content] = 1
    return arrays["input_ids"], arrays["attention_mask"].sum(axis=1).astype("int64"), mask


def loss(head: ChoiceHead, items: list[ChoiceInput], pad_id: int):
    """The mean loss of a batch: cross-entropy over a single control's options, binary
    cross-entropy of each option of a multiple one."""
    windows, groups = [], []
    for item in items:
        groups.append(list(range(len(windows), len(windows) + len(item.windows))))
        windows += item.windows
    ids, lengths, mask = batch_arrays(windows, pad_id)
    logits = head(paddle.to_tensor(ids), paddle.to_tensor(lengths), paddle.to_tensor(mask), groups)
    terms = []
    for row, item in enumerate(items):
        for k, picked in item.targets:
            first, n = head.first[k], len(head.controls[k]["options"])
            z = logits[row, first: first + n]
            if head.controls[k]["multiple"]:
                target = np.zeros(n, dtype="float32")
                target[list(picked)] = 1
                terms.append(paddle.nn.functional.binary_cross_entropy_with_logits(z, paddle.to_tensor(target)))
            else:
                terms.append(paddle.nn.functional.cross_entropy(
                    z.unsqueeze(0), paddle.to_tensor([picked[0]], dtype="int64")).mean())
    return paddle.add_n(terms) / len(terms)


def build(vocab: list[str], controls, seed: int = 0, **shape) -> ChoiceHead:
    """A fresh head for a tokenizer's ``vocab`` (tokens in id order), its embedding started
    from LAC's where LAC is installed."""
    from uie import lac

    options = dict(SHAPE, **shape)
    paddle.seed(seed)
    start = lac.for_vocab(vocab, options["embedding_size"], seed=seed)
    head = ChoiceHead(len(vocab), controls, embedding_start=lac.SOURCE if start is not None
                      else "random", **options)
    if start is not None:
        head.embedding.weight.set_value(start)
    return head


def with_controls(head: ChoiceHead, controls) -> ChoiceHead:
    """``head`` for ``controls``: the same embedding and GRU, the output rows of the options
    of a control (by prefix) it already knows, fresh rows for the others."""
    options = {k: v for k, v in head.config.items() if k not in ("controls", "vocab_size")}
    new = ChoiceHead(head.config["vocab_size"], controls, **options)
    if new.controls == head.controls:
        new.set_state_dict(head.state_dict())
        return new
    new.set_state_dict({k: v for k, v in head.state_dict().items() if not k.startswith("out.")})
    old_w, old_b = head.out.weight.numpy(), head.out.bias.numpy()
    w, b = new.out.weight.numpy(), new.out.bias.numpy()
    old = {(c["prefix"], o): head.first[k] + j for k, c in enumerate(head.controls)
           for j, o in enumerate(c["options"])}
    for k, c in enumerate(new.controls):
        for j, o in enumerate(c["options"]):
            if (c["prefix"], o) in old:
                w[:, new.first[k] + j] = old_w[:, old[(c["prefix"], o)]]
                b[new.first[k] + j] = old_b[old[(c["prefix"], o)]]
    new.out.weight.set_value(w)
    new.out.bias.set_value(b)
    return new


# --------------------------------------------------------------------------
# Files

def save(head: ChoiceHead, path) -> None:
    """Write ``choice_head.json`` and ``choice_head.pdparams`` into the model directory ``path``."""
    path = Path(path)
    paddle.save(head.state_dict(), str(path / WEIGHTS_FILE))
    (path / CONFIG_FILE).write_text(json.dumps(head.config, ensure_ascii=False, indent=2), encoding="utf-8")


def has_head(path) -> bool:
    return (Path(path) / CONFIG_FILE).exists()


def load(path) -> ChoiceHead | None:
    """The head saved in the model directory ``path`` (eval mode), None if it has none;
    ``ChoiceHeadError`` if its files are damaged or do not fit together."""
    path = Path(path)
    if not has_head(path):
        return None
    try:
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        controls = config.pop("controls")
        vocab_size = config.pop("vocab_size")
        head = ChoiceHead(vocab_size, controls, **config)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ChoiceHeadError(f"{path / CONFIG_FILE}: not a choice head configuration ({exc})") from None
    return load_state(head, path / WEIGHTS_FILE, CONFIG_FILE, ChoiceHeadError)


# --------------------------------------------------------------------------
# Serving

class HeadRunner:
    """A loaded head answering texts' windows, one batch at a time (a dygraph layer is not
    run by two threads at once)."""

    def __init__(self, head: ChoiceHead):
        self.head = head
        self._lock = threading.Lock()

    def find(self, prompt: str):
        return self.head.find(prompt)

    def features(self, windows, pad_id: int) -> np.ndarray:
        """Pooled features ``(len(windows), 2 * hidden)`` of ``EncodedInput`` windows."""
        ids, lengths, mask = batch_arrays(windows, pad_id)
        with self._lock, paddle.no_grad():
            return self.head.features(paddle.to_tensor(ids), paddle.to_tensor(lengths),
                                      paddle.to_tensor(mask)).numpy()

    def logits(self, features: np.ndarray) -> np.ndarray:
        """The logits of one text from its windows' pooled features (pooled again)."""
        pooled = features.max(axis=0)
        with self._lock:        # read each time: a head in training changes
            w, b = self.head.out.weight.numpy(), self.head.out.bias.numpy()
        return pooled @ w + b

    def answer(self, prompt: str, logits: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
        """``[(start, end, probability)]`` of the options it answers to ``prompt`` (offsets into
        the prompt, PaddleNLP's negative ones): the argmax of a single control, every option
        above ``threshold`` of a multiple one."""
        k, order = self.head.find(prompt)
        probs = self.head.probabilities(logits, k)
        offsets = option_offsets(prompt)
        if self.head.controls[k]["multiple"]:
            return [(s, e, float(probs[j])) for (s, e), j in zip(offsets, order) if probs[j] > threshold]
        best = int(np.argmax(probs))
        return [(s, e, float(probs[j])) for (s, e), j in zip(offsets, order) if j == best]

    def doubt(self, prompt: str, logits: np.ndarray, threshold: float) -> tuple[float, float]:
        """``(margin, entropy)`` of its answer: a multiple control's per-option decisions as
        the UIE's are measured; a single one's margin is the top probability less the next."""
        k, _ = self.head.find(prompt)
        probs = self.head.probabilities(logits, k)
        p = np.clip(probs, 1e-12, 1 - 1e-12)
        if self.head.controls[k]["multiple"]:
            margins = np.where(probs >= threshold, (probs - threshold) / max(1 - threshold, 1e-9),
                               (threshold - probs) / max(threshold, 1e-9))
            return float(margins.min()), float(-(p * np.log(p) + (1 - p) * np.log(1 - p)).sum())
        top = np.sort(probs)[::-1]
        return float(top[0] - (top[1] if len(top) > 1 else 0.0)), float(-(p * np.log(p)).sum())
