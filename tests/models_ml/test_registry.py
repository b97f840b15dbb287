import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from models_ml import registry as registry_module
from models_ml.lfm import LFMEncoderClassifier, predict
from models_ml.registry import IntegrityError, ModelRegistry, VersionNotFound, content_hash

ROOT = Path(__file__).resolve().parents[2]


def test_save_load_round_trip(trained_bert, eval_data, tmp_path):
    reg = ModelRegistry(tmp_path)
    meta = {"dataset_sha256": "ab" * 32, "feedback_ids": [3, 5, 8], "metrics": {"f1": 0.9}}
    record = reg.save(trained_bert, trained_bert.tokenizer, meta)
    assert len(record.id) == 16 and record.sha256.startswith(record.id)
    assert record.path == tmp_path / "lfm" / record.id
    assert not record.existed
    model, tok, loaded_meta = reg.load(record.id)
    assert isinstance(model, LFMEncoderClassifier) and not model.training
    assert predict(model, tok, eval_data) == pytest.approx(predict(trained_bert, trained_bert.tokenizer, eval_data), abs=1e-6)
    for key in ("dataset_sha256", "feedback_ids", "metrics", "created_at", "sha256", "base_model", "seed"):
        assert key in loaded_meta
    assert loaded_meta["hyperparameters"]["lr"] == trained_bert.lfm_config.lr
    assert loaded_meta["history"][0]["epoch"] == 0
    assert reg.load(f"lfm/{record.id}")[2] == loaded_meta
    assert [r.id for r in reg.list()] == [record.id]
    assert (record.path / "model.safetensors").is_file() and (record.path / "config.json").is_file()


def test_a_version_is_a_base_model_with_its_head(trained_bert, eval_data, tmp_path):
    from models_ml.lfm import LFMConfig, build_model, load_tokenizer

    record = ModelRegistry(tmp_path).save(trained_bert, trained_bert.tokenizer, {})
    config = LFMConfig(**{**trained_bert.lfm_config.to_dict(), "base_model": str(record.path)})
    warm = build_model(config).eval()
    warm.lfm_config = config
    expected = predict(trained_bert, trained_bert.tokenizer, eval_data)
    assert predict(warm, load_tokenizer(record.path), eval_data) == pytest.approx(expected, abs=1e-6)


def test_content_addressed(trained_bert, bert_config, tmp_path):
    reg = ModelRegistry(tmp_path)
    a = reg.save(trained_bert, trained_bert.tokenizer, {"run": 1})
    b = reg.save(trained_bert, trained_bert.tokenizer, {"run": 2})
    assert a.id == b.id and b.existed
    assert b.metadata["run"] == 1  # the first save's metadata stays
    assert len(reg.list()) == 1
    changed = LFMEncoderClassifier(trained_bert.encoder, bert_config)
    changed.head.load_state_dict(trained_bert.head.state_dict())
    with torch.no_grad():
        changed.head.bias += 0.5
    c = reg.save(changed, trained_bert.tokenizer, {})
    assert c.id != a.id
    assert {r.id for r in reg.list()} == {a.id, c.id}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp", "lfm"]
    assert list((tmp_path / ".tmp").iterdir()) == []


def test_verify_detects_tampering(trained_bert, tmp_path):
    reg = ModelRegistry(tmp_path)
    record = reg.save(trained_bert, trained_bert.tokenizer, {})
    assert reg.verify(record.id)
    head = record.path / "lfm_head.safetensors"
    data = bytearray(head.read_bytes())
    data[-1] ^= 0x01
    head.write_bytes(bytes(data))
    assert not reg.verify(record.id)
    with pytest.raises(IntegrityError):
        reg.load(record.id)
    data[-1] ^= 0x01
    head.write_bytes(bytes(data))
    assert reg.verify(record.id)
    (record.path / "extra.txt").write_text("x")
    assert not reg.verify(record.id)
    (record.path / "extra.txt").unlink()
    # metadata is not part of the content
    meta = json.loads((record.path / "metadata.json").read_text())
    meta["notes"] = "edited"
    (record.path / "metadata.json").write_text(json.dumps(meta))
    assert reg.verify(record.id)


def test_failure_before_rename_leaves_nothing(trained_bert, tmp_path, monkeypatch):
    reg = ModelRegistry(tmp_path)

    def boom(tmp, final):
        assert (tmp / "metadata.json").is_file()  # everything was written before the rename
        raise OSError("disk unplugged")

    monkeypatch.setattr(registry_module, "_publish", boom)
    with pytest.raises(OSError):
        reg.save(trained_bert, trained_bert.tokenizer, {})
    assert reg.list() == []
    assert not any((tmp_path / "lfm").iterdir())
    assert list((tmp_path / ".tmp").iterdir()) == []


def test_crash_before_rename_leaves_nothing_under_the_final_name(tiny_bert, tmp_path):
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from models_ml import registry
        from models_ml.lfm import LFMConfig, build_model, load_tokenizer

        def crash(tmp, final):
            print(final.name, flush=True)
            os._exit(3)

        registry._publish = crash
        model = build_model(LFMConfig(base_model={str(tiny_bert)!r}))
        registry.ModelRegistry({str(tmp_path)!r}).save(model, load_tokenizer({str(tiny_bert)!r}), {{}})
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 3, proc.stderr
    final_name = proc.stdout.strip().splitlines()[-1]
    reg = ModelRegistry(tmp_path)
    assert not (tmp_path / "lfm" / final_name).exists()
    assert reg.list() == []
    with pytest.raises(VersionNotFound):
        reg.load(final_name)
    leftovers = list((tmp_path / ".tmp").iterdir())
    assert len(leftovers) == 1 and content_hash(leftovers[0])[:16] == final_name
    assert reg.clean_tmp(older_than_s=0) == 1
    assert list((tmp_path / ".tmp").iterdir()) == []


def test_unknown_versions(tmp_path):
    reg = ModelRegistry(tmp_path)
    for bad in ("0123456789abcdef", "lfm/../x", "../lfm", ".tmp/x", ""):
        with pytest.raises(VersionNotFound):
            reg.get(bad)
    assert reg.list() == []
