"""Question terms and sentence relevance (no model involved)."""

from __future__ import annotations

import numpy as np
import pytest

from thrifty.compressors.question import question_terms, sentence_relevance


def _spans(text: str, sentences: list[str]) -> tuple[np.ndarray, np.ndarray]:
    starts = [text.index(s) for s in sentences]
    return np.array(starts), np.array([s + len(t) for s, t in zip(starts, sentences, strict=True)])


def test_terms_drop_function_words_and_match_inflections():
    assert question_terms("Where did the Larkspur team move its build servers?") == {
        "larkspur", "team", "mov", "build", "server"}
    assert question_terms("Last spring the Larkspur team moved its build servers to Nairobi.") >= {
        "larkspur", "team", "mov", "build", "server"}
    assert question_terms("maintains") == question_terms("maintained") == question_terms("maintain")
    assert question_terms("What is it?") == set()


def test_terms_keep_numbers_and_identifiers_and_pair_up_spaceless_scripts():
    assert question_terms("Is error E1234 in v2 of order_id 7?") >= {"error", "e1234", "v2", "order_id", "7"}
    assert question_terms("東京の天気") == {"東京", "京の", "の天", "天気"}
    assert question_terms("猫") == {"猫"}
    assert question_terms("___ !!! ...") == set()


def test_relevance_is_the_idf_weighted_share_of_question_terms():
    sentences = ["The Larkspur team moved its build servers to Nairobi.",
                 "The team also moved its office.",
                 "Nothing else happened.",
                 "The team met on Monday."]
    text = " ".join(sentences)
    rel = sentence_relevance(text, *_spans(text, sentences), "Where did the Larkspur team move its build servers?")
    assert rel[0] == pytest.approx(1.0)
    assert rel[2] == 0.0
    assert 0 < rel[3] < rel[1] < rel[0]  # "team" is in three of four sentences: it weighs little


def test_relevance_without_a_question_or_sentences_is_zero():
    text = "One sentence. Another one."
    starts, ends = _spans(text, ["One sentence.", "Another one."])
    assert sentence_relevance(text, starts, ends, "the of and?").tolist() == [0.0, 0.0]
    assert sentence_relevance(text, starts[:0], ends[:0], "sentence").shape == (0,)
    assert sentence_relevance(text, starts, ends, "Which sentence?").tolist() == [1.0, 0.0]


def test_mixed_runs_split_into_their_scripts():
    assert question_terms("v2版本") == {"v2", "版本"}
    assert question_terms("Tokyo東京") == {"tokyo", "東京"}
