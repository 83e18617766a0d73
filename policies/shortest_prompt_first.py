"""Example policy: decodes first, then whole prefills of the shortest waiting prompts.

Not from a paper: the worked example of docs/policies.md. Every running request decodes one token each
iteration; the rest of a `max_num_batched_tokens` budget goes to waiting requests in order of prompt
length (shortest first, earliest arrival among equals), each prefilled whole in the same iteration, up
to `max_batch_size` requests (a prompt longer than the budget runs in a batch of its own). Short prompts
overtake long ones, which lowers mean TTFT but can starve long prompts under load.
"""
from __future__ import annotations

from policies.base import POLICIES, Batch, Parameter, Policy


class ShortestPromptFirst(Policy):
    parameters = (
        Parameter("max_batch_size", "requests per batch"),
        Parameter("max_num_batched_tokens", "token budget per iteration; a longer prompt runs alone"),
    )

    def __init__(self, kv, requests, max_batch_size: int = 128, max_num_batched_tokens: int = 8192):
        super().__init__(kv, requests)
        self.max_batch_size = max_batch_size
        self.max_num_batched_tokens = max_num_batched_tokens

    def schedule(self, now_s: float) -> Batch | None:
        # Every running request decodes (prefills are whole, so running requests are all decoding).
        ids = self.schedule_decodes(list(self.running)[: self.max_batch_size])
        tokens = [1] * len(ids)
        budget = self.max_num_batched_tokens - len(ids)

        for r in sorted(self.waiting, key=lambda r: (self.requests.prompt_tokens[r], r)):
            need = self.requests.pending_tokens(r)
            if len(ids) == self.max_batch_size or (need > budget and ids):  # a long prompt may run alone
                break
            if not self.admit(r, need):
                break
            ids.append(r), tokens.append(need)
            budget -= need
        return Batch.of(ids, tokens)


POLICIES["shortest_prompt_first"] = ShortestPromptFirst
