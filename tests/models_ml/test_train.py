import math

import pytest
import torch

from models_ml.lfm import Cancelled, LFMConfig, StepExample, build_model, evaluate, example_weight, predict, train
from models_ml.lfm.model import encode, load_tokenizer
from models_ml.lfm.train import seed_everything


def labels_of(examples):
    return [bool(e.label) for e in examples]


def test_training_improves_f1_over_the_untrained_model(bert_config, trained_bert, eval_data):
    seed_everything(bert_config.seed)
    untrained = build_model(bert_config).eval()
    tok = trained_bert.tokenizer
    before = evaluate(labels_of(eval_data), predict(untrained, tok, eval_data))
    after = evaluate(labels_of(eval_data), predict(trained_bert, tok, eval_data))
    assert after["f1"] >= 0.85
    assert after["f1"] > before["f1"]
    assert after["auroc"] >= 0.95
    assert [h["epoch"] for h in trained_bert.history] == [0, 1, 2]
    assert trained_bert.history[-1]["loss"] < trained_bert.history[0]["loss"]


def test_same_seed_same_predictions(bert_config, train_data, eval_data, trained_bert):
    again = train(bert_config, train_data, device="cpu")
    first = predict(trained_bert, trained_bert.tokenizer, eval_data)
    second = predict(again, again.tokenizer, eval_data)
    assert first == second
    other = train(LFMConfig(**{**bert_config.to_dict(), "seed": 1}), train_data, device="cpu")
    assert predict(other, other.tokenizer, eval_data) != first


def test_progress_and_cancellation(bert_config, train_data):
    calls = []
    asked = []

    def should_stop():
        asked.append(1)
        return len(asked) > 3

    with pytest.raises(Cancelled):
        train(bert_config, train_data, device="cpu", progress=lambda *a: calls.append(a), should_stop=should_stop)
    total = math.ceil(len(train_data) / bert_config.batch_size) * bert_config.epochs
    assert [c[1] for c in calls] == [1, 2, 3]
    assert all(c[0] == 0 and c[2] == total and math.isfinite(c[3]) for c in calls)


def test_progress_reports_every_step(bert_config, train_data):
    calls = []
    cfg = LFMConfig(**{**bert_config.to_dict(), "epochs": 2})
    train(cfg, train_data[:20], device="cpu", progress=lambda *a: calls.append(a))
    assert [(c[0], c[1]) for c in calls] == [(0, 1), (0, 2), (0, 3), (1, 4), (1, 5), (1, 6)]


def test_needs_labelled_examples(bert_config):
    unlabelled = [StepExample(task="t", before="b", action="a", after="c")]
    with pytest.raises(ValueError):
        train(bert_config, unlabelled, device="cpu")


def test_llm_labels_weigh_less():
    cfg = LFMConfig(llm_label_weight=0.3)
    human = StepExample(task="t", before="b", action="a", after="c", label=True)
    llm = StepExample(task="t", before="b", action="a", after="c", label=True, source="llm", weight=2.0)
    assert example_weight(human, cfg) == 1.0
    assert example_weight(llm, cfg) == pytest.approx(0.6)


def test_loss_is_the_weighted_mean_of_bce(bert_config, tiny_bert):
    seed_everything(0)
    model = build_model(bert_config).eval()
    tok = load_tokenizer(tiny_bert)
    batch = encode(tok, ["Action: take key", "Action: look"], 32, torch.device("cpu"))
    y = torch.tensor([True, False])
    w = torch.tensor([1.0, 0.3])
    with torch.no_grad():
        logits = model.logits(**batch)
        per = torch.nn.functional.binary_cross_entropy_with_logits(logits, y.float(), reduction="none")
        assert float(model.loss(batch, y, w)) == pytest.approx(float((per * w).sum() / w.sum()), rel=1e-6)
        only_first = model.loss(batch, y, torch.tensor([1.0, 0.0]))
        assert float(only_first) == pytest.approx(float(per[0]), rel=1e-6)


def test_predict_keeps_order_and_batch_size_does_not_matter(trained_bert, eval_data):
    tok = trained_bert.tokenizer
    one = predict(trained_bert, tok, eval_data, batch_size=1)
    many = predict(trained_bert, tok, eval_data, batch_size=64)
    assert all(0.0 <= p <= 1.0 for p in one)
    assert many == pytest.approx(one, abs=1e-5)
    single = predict(trained_bert, tok, [eval_data[5]])
    assert single[0] == pytest.approx(one[5], abs=1e-5)
    assert predict(trained_bert, tok, []) == []
