"""Exact mode makes the same keep decisions as llmlingua's LLMLingua-2 path, for the same weights."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import pytest

from tests.compressors.conftest import PASSAGE

pytestmark = pytest.mark.model

_CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"

TEXTS = [
    PASSAGE,
    PASSAGE * 5,  # several chunks, each cut after a "."
    "Item one: apples, pears and plums; item two - a long list of vegetables without any full stop " * 30,
    "La réunion s'est tenue mardi. Les membres ont discuté du budget, des réparations du toit et du "
    "chauffage de l'ancienne bibliothèque. Ils ont voté à l'unanimité pour demander des fonds. " * 4,
    "In 2023, the company's revenue grew by 12.5% to $4.2 billion (see table 3), while costs rose 8%. " * 6,
]


@pytest.fixture(scope="module")
def llmlingua(tmp_path_factory: pytest.TempPathFactory, weights: Path):
    from tests.compressors.weights_support import export_transformers
    from thrifty.ledger.tokens import _bpe_openai_data_dir

    llmlingua = pytest.importorskip("llmlingua")
    cache = tmp_path_factory.mktemp("tiktoken")
    data = gzip.decompress((_bpe_openai_data_dir() / "cl100k_base.tiktoken.gz").read_bytes())
    (cache / hashlib.sha1(_CL100K_URL.encode()).hexdigest()).write_bytes(data)
    # llmlingua picks its word-merging rule from this substring of the model path
    folder = export_transformers(weights, tmp_path_factory.mktemp("m") / "bert-base-multilingual-cased-test")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        yield llmlingua.PromptCompressor(model_name=str(folder), use_llmlingua2=True, device_map="cpu")


def _llmlingua_labels(pc, text: str, rate: float) -> tuple[list[str], list[bool]]:
    res = pc.compress_prompt_llmlingua2([text], rate=rate, use_context_level_filter=False, return_word_label=True)
    words, keep = [], []
    for item in res["fn_labeled_original_prompt"].split("\t\t|\t\t"):
        word, label = item.rsplit(" ", 1)
        words.append(word)
        keep.append(label == "1")
    return words, keep


@pytest.mark.parametrize("rate", [0.5, 0.33])
@pytest.mark.parametrize("index", range(len(TEXTS)))
def test_exact_mode_keeps_what_llmlingua_keeps(llmlingua, exact, index, rate):
    text = TEXTS[index]
    words, keep = _llmlingua_labels(llmlingua, text, rate)
    ours = exact.keep_decisions(text, rate, sentence_weight=0, relation_weight=0)  # llmlingua's selection rule
    assert ours.words == words
    assert ours.keep.tolist() == keep
