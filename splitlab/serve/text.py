"""Token ids -> streamed text, with OpenAI ``stop`` sequences.

Text is re-decoded from all generated tokens at each step (a byte-level BPE token can be half of a
UTF-8 character), and a delta is released only when it cannot still turn into a stop sequence or
into a character that the next token completes.
"""
from __future__ import annotations

from transformers import PreTrainedTokenizerBase

REPLACEMENT = "\ufffd"


class TextAssembler:
    """Collects generated token ids and hands out safe text deltas; stops at the first stop sequence."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: list[str] | tuple[str, ...] = (),
                 incremental: bool = True):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        # Without stop sequences and without a reader of deltas, decoding once at the end suffices.
        self.incremental = incremental or bool(self.stop)
        self.token_ids: list[int] = []
        self.emitted = ""  # text already handed out
        self.text = ""  # full decoded text (cut at a stop sequence once one is found)
        self.stopped = False

    def add(self, token_id: int) -> str:
        """Append one token; returns the text that is now safe to send (possibly "")."""
        self.token_ids.append(token_id)
        if not self.incremental:
            return ""
        self.text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        cut = self._first_stop()
        if cut is not None:
            self.text, self.stopped = self.text[:cut], True
            return self._release(len(self.text))
        return self._release(self._safe_length())

    def flush(self) -> str:
        """Everything not yet sent (at the end of generation)."""
        if not self.incremental:
            self.text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        return self._release(len(self.text))

    def _first_stop(self) -> int | None:
        # Only a stop sequence that overlaps the unsent tail can be new.
        window = max(0, len(self.emitted) - max((len(s) for s in self.stop), default=0))
        hits = [i for s in self.stop if (i := self.text.find(s, window)) >= 0]
        return min(hits) if hits else None

    def _safe_length(self) -> int:
        end = len(self.text)
        while end > len(self.emitted) and self.text[end - 1] == REPLACEMENT:
            end -= 1  # an incomplete multi-byte character; the next token may complete it
        hold = 0
        for s in self.stop:  # the tail could be the start of a stop sequence
            for n in range(min(len(s) - 1, end), 0, -1):
                if self.text[end - n:end] == s[:n]:
                    hold = max(hold, n)
                    break
        return max(end - hold, len(self.emitted))

    def _release(self, upto: int) -> str:
        if not self.text.startswith(self.emitted):
            # The decoder rewrote text already sent (rare whitespace clean-up): send only what is new.
            upto = max(upto, len(self.emitted))
        delta = self.text[len(self.emitted):upto]
        self.emitted = self.emitted + delta
        return delta
