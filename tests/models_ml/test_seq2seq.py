"""The seq2seq path (the LFM paper's Yes/No scoring) on a tiny random T5 with a word-level tokenizer."""

import pytest
import torch

from models_ml.lfm import LFMConfig, LFMSeq2Seq, build_model, evaluate, explain, load_tokenizer, predict, train
from models_ml.lfm.model import encode, fit_text
from models_ml.lfm.train import _seq2seq_targets, seed_everything, target_text
from models_ml.registry import ModelRegistry


@pytest.fixture(scope="module")
def t5_config(tiny_t5):
    return LFMConfig(base_model=str(tiny_t5), max_length=96, lr=3e-3, epochs=3, batch_size=8, seed=0)


@pytest.fixture(scope="module")
def trained_t5(t5_config, train_data):
    return train(t5_config, train_data, device="cpu")


def test_probability_is_softmax_over_yes_and_no_of_the_first_decoder_token(t5_config, tiny_t5, eval_data):
    seed_everything(0)
    tok = load_tokenizer(tiny_t5)
    model = build_model(t5_config, tok).eval()
    assert isinstance(model, LFMSeq2Seq)
    assert (model.yes_id, model.no_id) == (tok.convert_tokens_to_ids("Yes"), tok.convert_tokens_to_ids("No"))
    probs = predict(model, tok, eval_data[:4])
    texts = [fit_text(e, tok, 96, t5_config.context_steps) for e in eval_data[:4]]
    with torch.no_grad():
        for text, p in zip(texts, probs):
            batch = encode(tok, [text], 96, torch.device("cpu"))
            start = torch.tensor([[model.lm.config.decoder_start_token_id]])
            logits = model.lm(**batch, decoder_input_ids=start).logits[0, 0]
            expected = torch.softmax(logits[[model.yes_id, model.no_id]], dim=0)[0]
            assert p == pytest.approx(float(expected), abs=1e-6)


def test_training_learns_yes_and_no(t5_config, tiny_t5, trained_t5, eval_data):
    seed_everything(0)
    untrained = build_model(t5_config).eval()
    tok = trained_t5.tokenizer
    labels = [bool(e.label) for e in eval_data]
    before = evaluate(labels, predict(untrained, tok, eval_data))
    after = evaluate(labels, predict(trained_t5, tok, eval_data))
    assert after["auroc"] >= 0.9 and after["f1"] >= 0.85
    assert after["f1"] > before["f1"] or after["auroc"] > before["auroc"]


def test_targets_with_reasons(t5_config, tiny_t5, train_data):
    e = train_data[0]
    e_reason = type(e)(**{**e.__dict__, "reason": "it  picks up the key"})
    assert target_text(e_reason, t5_config) == ("Yes" if e.label else "No")
    with_reasons = LFMConfig(**{**t5_config.to_dict(), "seq2seq_reasons": True})
    assert target_text(e_reason, with_reasons) == ("Yes" if e.label else "No") + ". it picks up the key"
    tok = load_tokenizer(tiny_t5)
    model = build_model(t5_config, tok)
    ids = _seq2seq_targets(model, tok, ["Yes . it", "No"], [True, False], torch.device("cpu"))
    assert ids[0, 0] == model.yes_id and ids[1, 0] == model.no_id
    assert ids[1, -1] == -100  # padding is ignored by the loss
    with pytest.raises(ValueError):
        _seq2seq_targets(model, tok, ["No"], [True], torch.device("cpu"))


def test_registry_round_trip_and_explanations(trained_t5, eval_data, tmp_path):
    reg = ModelRegistry(tmp_path)
    record = reg.save(trained_t5, trained_t5.tokenizer, {"metrics": {"f1": 1.0}})
    model, tok, meta = reg.load(record.id)
    assert isinstance(model, LFMSeq2Seq) and meta["arch"] == "seq2seq"
    assert predict(model, tok, eval_data) == pytest.approx(predict(trained_t5, trained_t5.tokenizer, eval_data), abs=1e-6)
    words = explain(model, tok, eval_data[0], method="integrated_gradients", steps=4)
    assert words and all(-1.0 <= w <= 1.0 for _, w in words)
