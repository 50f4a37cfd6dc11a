"""Decode hooks: code that sees and shapes every step of a local model's decode loop.

A local model exposes its logits, so techniques that act per token run inside
the provider's decode loop instead of around the call: grammar masks for
structured output (one XGrammar matcher per sequence) and token-level
small/large routing (R2R). They plug in through ``CallContext.decode_hooks``,
a list of *factories*:

* a factory is a callable ``factory(info: LocalModelInfo) -> DecodeHook``;
* for every sequence the provider generates (each of the ``n`` choices) it
  calls every factory once, so each hook holds the state of one sequence;
* the factory gets a :class:`LocalModelInfo` describing the model, so work that
  depends only on the model (XGrammar's ``TokenizerInfo``, say) can be done once
  per model and cached by the factory's owner, keyed by ``info.name``.

Each decode step, in order:

1. the model computes the next-token logits (a 1-D ``float32`` tensor of
   ``info.vocab_size`` entries, on the CPU);
2. every hook's :meth:`DecodeHook.process` runs in list order with the tokens
   generated so far in this sequence (prompt excluded) and the logits; a hook
   may change the logits in place (set banned entries to ``-inf``) or return a
   new tensor that the next hooks and the sampler see instead;
3. the sampler picks a token (greedy at temperature 0, otherwise
   temperature/top-p sampling);
4. every hook's :meth:`DecodeHook.accept` is called with the token;
5. the sequence ends with ``finish_reason="stop"`` when the token is an
   end-of-sequence token or when any hook's :meth:`DecodeHook.is_finished`
   returns True (a grammar that has matched a complete document), and with
   ``"length"`` when ``max_tokens`` is used up.

Reported log-probabilities are the model's own distribution (before hooks
and temperature), so a masked token can still appear among ``top_logprobs``.
A hook that masks every token is a bug in the hook; the provider then fails the
call with :class:`~thrifty.errors.LocalModelError`.

Hooks run in the generation thread while the model's lock is held: they must
be fast (the decode step is 40-200 ms on a CPU) and must not block.

Example, a hook that only lets the model write digits::

    class DigitsOnly:
        def __init__(self, info: LocalModelInfo) -> None:
            vocab = info.tokenizer.convert_ids_to_tokens(range(info.vocab_size))
            self.banned = torch.tensor(
                [not (t or "").isdigit() and i not in info.eos_token_ids for i, t in enumerate(vocab)]
            )

        def process(self, token_ids, logits):
            logits[self.banned] = float("-inf")
            return None

        def accept(self, token_id):
            pass

        def is_finished(self):
            return False

    ctx.decode_hooks.append(DigitsOnly)  # the class is its own factory
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

__all__ = ["DecodeHook", "DecodeHookFactory", "LocalModelInfo"]


@dataclass(frozen=True, slots=True, eq=False)
class LocalModelInfo:
    """What a hook factory needs to know about the model it will run inside.

    ``vocab_size`` is the size of the logits vector, which can be larger than
    the tokenizer's vocabulary (models pad it); pass it to
    ``xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=...)``.
    """

    #: the model's name as callers address it after ``local/`` (catalogue name or path)
    name: str
    #: the Hugging Face tokenizer of the model (a ``PreTrainedTokenizerBase``)
    tokenizer: Any
    #: the number of logits per step
    vocab_size: int
    #: token ids that end a sequence
    eos_token_ids: frozenset[int]
    #: the context window in tokens (prompt plus output)
    context_length: int


@runtime_checkable
class DecodeHook(Protocol):
    """Per-sequence state that can mask or modify logits and end a sequence."""

    def process(self, token_ids: list[int], logits: torch.Tensor) -> torch.Tensor | None:
        """Shape the next step's logits: modify ``logits`` in place and return None, or return new ones.

        ``token_ids`` are the tokens generated so far in this sequence (not
        the prompt); do not mutate the list.
        """
        ...

    def accept(self, token_id: int) -> None:
        """Record the token the sampler picked for this sequence."""
        ...

    def is_finished(self) -> bool:
        """True when the sequence must end now (its finish reason is ``"stop"``)."""
        ...


#: Builds one hook per generated sequence; see the module docstring.
DecodeHookFactory = Callable[[LocalModelInfo], DecodeHook]
