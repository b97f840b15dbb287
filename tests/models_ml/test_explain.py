import pytest

from models_ml.lfm import explain, fit_text
from models_ml.lfm.explain import merge_words, token_attributions


@pytest.mark.parametrize("method", ["grad_x_input", "integrated_gradients"])
def test_one_weight_per_word_in_range(trained_bert, eval_data, method):
    model, tok = trained_bert, trained_bert.tokenizer
    example = eval_data[0]
    words = explain(model, tok, example, method=method, steps=8)
    text = fit_text(example, tok, model.lfm_config.max_length, model.lfm_config.context_steps)
    assert [w for w, _ in words] == text.split()
    weights = [x for _, x in words]
    assert all(-1.0 <= x <= 1.0 for x in weights)
    assert max(abs(x) for x in weights) == pytest.approx(1.0)
    assert not model.training


def test_integrated_gradients_add_up_to_the_logit_change(trained_bert, eval_data):
    model, tok = trained_bert, trained_bert.tokenizer
    text = fit_text(eval_data[1], tok, model.lfm_config.max_length, model.lfm_config.context_steps)
    attr = token_attributions(model, tok, text, "integrated_gradients", steps=128)
    change = attr.logit - attr.baseline_logit
    assert abs(change) > 1e-3
    assert sum(attr.scores) == pytest.approx(change, rel=0.05, abs=1e-3)


def test_explanations_cover_only_words_in_the_window(trained_bert, eval_data):
    from models_ml.lfm import LFMConfig

    model, tok = trained_bert, trained_bert.tokenizer
    saved = model.lfm_config
    model.lfm_config = LFMConfig(**{**saved.to_dict(), "max_length": 16})
    try:
        words = explain(model, tok, eval_data[2])
    finally:
        model.lfm_config = saved
    assert 0 < len(words) <= 14
    assert [w for w, _ in words] == fit_text(eval_data[2], tok, 16, saved.context_steps).split()[: len(words)]


def test_merge_words_sums_pieces_and_normalises():
    text = "Task: go northward"
    #          [CLS]   task    :       go      north    ##ward    [SEP]
    offsets = [(0, 0), (0, 4), (4, 5), (6, 8), (9, 14), (14, 18), (0, 0)]
    special = [True, False, False, False, False, False, True]
    scores = [9.0, 1.0, 1.0, -1.0, 2.0, 2.0, 9.0]
    assert merge_words(text, offsets, special, scores) == [("Task:", 0.5), ("go", -0.25), ("northward", 1.0)]
    assert merge_words("a b", [(0, 1), (2, 3)], [False, False], [0.0, 0.0]) == [("a", 0.0), ("b", 0.0)]


def test_unknown_method(trained_bert, eval_data):
    with pytest.raises(ValueError):
        explain(trained_bert, trained_bert.tokenizer, eval_data[0], method="saliency")
