"""Distilling the keep/drop model into a shallower student, and loading it as the turbo mode's model."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.compressors.conftest import PASSAGE
from thrifty.compressors import _data, distil, model
from thrifty.compressors.model import fast_precision, fast_variant_dir, load_model
from thrifty.errors import LocalModelError


def test_student_layers_start_from_the_named_teacher_layers(weights):
    teacher = load_model(weights).model
    student = distil._student(teacher, [0, 1, 5])
    assert student.config.num_hidden_layers == 3 and teacher.config.num_hidden_layers == 6
    t, s = teacher.state_dict(), student.state_dict()
    for name in ("attention.self.query.weight", "output.dense.weight"):
        assert torch.equal(s[f"bert.encoder.layer.2.{name}"], t[f"bert.encoder.layer.5.{name}"])
        assert torch.equal(s[f"bert.encoder.layer.1.{name}"], t[f"bert.encoder.layer.1.{name}"])
    assert torch.equal(s["classifier.weight"], t["classifier.weight"])
    assert torch.equal(s["bert.embeddings.word_embeddings.weight"], t["bert.embeddings.word_embeddings.weight"])


def _distil(tmp_path, teacher, *extra):
    work = tmp_path / "work"
    sentences = [s.strip() + "." for s in PASSAGE.split(".") if s.strip()]
    rows = [_data.Passage(id=str(i), doc="d", text=" ".join(sentences[i:] + sentences[:i])) for i in range(12)]
    _data.write_jsonl(work / "train.jsonl", rows)
    return distil.run(distil.parser().parse_args([
        "--work", str(work), "--teacher", str(teacher), "--limit", "12", "--epochs", "2", "--batch-size", "4",
        "--threads", "1", "--layers-from", "0,1,5", "--frozen", "1", *extra,
    ]))


def test_distil_writes_a_student_the_turbo_mode_loads(tmp_path, weights):
    from thrifty.compressors.lingua import Compressor

    teacher = shutil.copytree(weights, tmp_path / "weights" / "teacher")
    metrics = _distil(tmp_path, teacher)
    assert metrics["steps"] == 2 * 3 and 0 <= metrics["dev_top_half_agreement_after"] <= 1
    variant = fast_variant_dir(teacher)
    assert variant == teacher.parent / "test-random-head-fast"
    manifest = json.loads((variant / "manifest.json").read_text())
    assert manifest["num_hidden_layers"] == 3
    assert manifest["distilled_from"]["name"] == "test-random-head"
    # layer 0 is the base's own and does not ship; layers 1-2 and the head do
    assert not any(n.startswith("bert.encoder.layer.0.") for n in manifest["delta_tensors"])
    assert {"classifier.weight", "bert.encoder.layer.2.output.dense.weight"} <= set(manifest["delta_tensors"])
    turbo = Compressor.load("turbo", str(teacher))  # the student beside the teacher
    assert turbo._m.model.config.num_hidden_layers == 3 and turbo._m.path == str(variant)
    assert turbo.precision == fast_precision(variant)
    fast = Compressor.load("fast", str(teacher))  # the teacher itself
    assert fast._m.model.config.num_hidden_layers == 6 and fast._m.path == str(teacher)
    exact = Compressor.load("exact", str(teacher))
    a, b = exact.keep_decisions(PASSAGE * 2, 0.5), turbo.keep_decisions(PASSAGE * 2, 0.5)
    assert a.words == b.words and len(b.keep) == len(a.keep)
    assert Compressor.load("turbo", str(variant))._m.path == str(variant)  # a student has no student

    manifest["num_hidden_layers"] = 9
    (variant / "manifest.json").write_text(json.dumps(manifest))
    model._models.pop((str(variant.resolve()), "float32"), None)  # loaded above
    with pytest.raises(LocalModelError, match="num_hidden_layers"):
        load_model(variant)


def test_a_student_written_elsewhere_leaves_the_teacher_as_it_was(tmp_path, weights, capsys):
    # an experiment must not point the shipped model's turbo mode at a directory it cannot find
    teacher = shutil.copytree(weights, tmp_path / "weights" / "teacher")
    before = (teacher / "manifest.json").read_bytes()
    out = tmp_path / "experiments" / "student"
    _distil(tmp_path, teacher, "--out", str(out))
    assert (out / "manifest.json").is_file() and (out / "delta.safetensors").is_file()
    assert (teacher / "manifest.json").read_bytes() == before
    assert fast_variant_dir(teacher) is None
    assert "is not beside" in capsys.readouterr().err


def test_no_fast_variant_means_the_model_itself(weights, tmp_path):
    from thrifty.compressors.lingua import Compressor

    assert fast_variant_dir(weights) is None
    assert Compressor.load("turbo", str(weights))._m.path == str(weights)
    other = shutil.copytree(weights, tmp_path / "w")
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["fast_variant"] = "../escape"
    (other / "manifest.json").write_text(json.dumps(manifest))
    assert fast_variant_dir(other) is None
