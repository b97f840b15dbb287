"""The Language Feedback Model: P(a step of an agent's trajectory was productive).

    from models_ml.lfm import LFMConfig, steps_from_trajectory, train, predict, explain, evaluate

    model = train(LFMConfig(epochs=3), train_examples, eval_examples)
    probs = predict(model, model.tokenizer, steps_from_trajectory(payload))
    words = explain(model, model.tokenizer, example, method="integrated_gradients")

Weights are only read from local folders (HF_HUB_OFFLINE is set to 1 when unset). See docs/models.md.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from .evaluate import auroc, ece, evaluate  # noqa: E402
from .explain import METHODS as EXPLAIN_METHODS  # noqa: E402
from .explain import explain  # noqa: E402
from .model import (  # noqa: E402
    KIND,
    LFMConfig,
    LFMEncoderClassifier,
    LFMSeq2Seq,
    build_model,
    default_base_model,
    count_tokens,
    fit_text,
    fit_texts,
    load_artifact,
    load_tokenizer,
    save_artifact,
)
from .predict import predict  # noqa: E402
from .text import StepExample, example_from_row, render, steps_from_trajectory  # noqa: E402
from .train import Cancelled, example_weight, train  # noqa: E402

__all__ = [
    "KIND",
    "EXPLAIN_METHODS",
    "Cancelled",
    "LFMConfig",
    "LFMEncoderClassifier",
    "LFMSeq2Seq",
    "StepExample",
    "auroc",
    "build_model",
    "default_base_model",
    "ece",
    "evaluate",
    "example_from_row",
    "example_weight",
    "explain",
    "count_tokens",
    "fit_text",
    "fit_texts",
    "load_artifact",
    "load_tokenizer",
    "predict",
    "render",
    "save_artifact",
    "steps_from_trajectory",
    "train",
]
