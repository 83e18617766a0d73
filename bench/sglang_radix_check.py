"""servesim's RadixCache against SGLang's own RadixCache, request by request, on a CPU.

SGLang's radix cache (sglang/srt/mem_cache/radix_cache.py) runs without a GPU when handed an allocator
that only counts tokens. Both caches get the same requests (the token ids of simulator/decision_scenarios.py:
shared prefixes shared token for token), SGLang a page of BLOCK_SIZE tokens, and the same protocol
(decision_scenarios.radix_hits): `window` requests at a time are admitted (the cached prefix of all but
the prompt's last token matched and locked, the rest allocated, evicting least recently used leaves when
short, the prompt inserted), then finish (the output allocated, everything computed inserted, the lock
released), as SGLang's scheduler does through match_prefix, evict, cache_unfinished_req and
cache_finished_req. SGLang's LRU clock is made a counter (call order), so ties cannot depend on the machine.
Compared: the tokens each request finds cached, at several KV capacities.

    python bench/sglang_radix_check.py                    # print the table
    python bench/sglang_radix_check.py --save data/validation/scheduler/sglang_radix

Needs SGLang, best in its own virtual environment (it pins its own torch); its radix cache runs on a
machine without a GPU:

    python -m venv .venv-sglang && .venv-sglang/bin/pip install -e . sglang==0.5.23
    .venv-sglang/bin/python bench/sglang_radix_check.py

The saved hits let tests/policies/test_sglang_radix_check.py check servesim's cache without SGLang.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from simulator.decision_scenarios import BLOCK_SIZE, SCENARIOS, build, radix_hits, token_ids

CAPACITIES = (40_000, 9669, 6000)  # blocks: nothing evicted, the fidelity plan's cache, tight
WINDOW = 1


class CountingAllocator:
    """What SGLang's RadixCache asks of its KV allocator, counting tokens: indices are handed out once."""

    device = "cpu"

    def __init__(self, tokens: int):
        self.free_tokens, self.next = tokens, 0

    def available_size(self) -> int:
        return self.free_tokens

    def alloc(self, n: int):
        import torch

        if n > self.free_tokens:
            raise RuntimeError(f"SGLang side: {n} tokens asked, {self.free_tokens} free")
        self.free_tokens -= n
        self.next += n
        return torch.arange(self.next - n, self.next)

    def free(self, indices) -> None:
        self.free_tokens += len(indices)

    def free_segment(self, indices, start_pos: int = 0) -> None:
        self.free_tokens += len(indices)


def sglang_hits(name: str, num_blocks: int, window: int) -> tuple[list[int], str]:
    """SGLang's RadixCache on decision_scenarios.radix_hits's protocol: each request's cached tokens."""
    import sglang
    import sglang.srt.mem_cache.radix_cache as radix
    import torch
    from sglang.srt.mem_cache.base_prefix_cache import EvictParams, InsertParams, MatchPrefixParams

    clock = itertools.count()
    radix.time.monotonic = lambda: next(clock)  # its LRU order: call order
    requests, _, _ = build(SCENARIOS[name])
    ints = requests.ints
    n = len(ints.prompt_tokens)
    allocator = CountingAllocator(num_blocks * BLOCK_SIZE)
    cache = radix.RadixCache.create_simulated(mock_allocator=allocator, page_size=BLOCK_SIZE)

    def allocate(tokens: int):
        if allocator.available_size() < tokens:
            cache.evict(EvictParams(num_tokens=tokens - allocator.available_size()))
        return allocator.alloc(tokens)

    def insert(ids: list[int], rows, protected: int):
        """Insert ids (page-aligned by the cache), free the rows the tree had already; the new last node."""
        inserted = cache.insert(InsertParams(key=radix.RadixKey(ids), value=rows))
        allocator.free(rows[protected:inserted.prefix_len])
        aligned = len(ids) // BLOCK_SIZE * BLOCK_SIZE
        return cache.match_prefix(MatchPrefixParams(key=radix.RadixKey(ids[:aligned]))).last_device_node, aligned

    hits, held = [], {}
    for start in range(0, n, window):
        group = range(start, min(n, start + window))
        for r in group:
            prompt, output = int(ints.prompt_tokens[r]), int(ints.output_tokens[r])
            ids = token_ids(requests, r, prompt + output).tolist()
            match = cache.match_prefix(MatchPrefixParams(key=radix.RadixKey(ids[:prompt - 1])))
            hit, node = match.device_prefix_len, match.last_device_node
            cache.inc_lock_ref(node)
            rows = torch.cat([cache.path_device_indices(node)[:hit], allocate(prompt - hit)])
            last, protected = insert(ids[:prompt], rows, hit)
            cache.dec_lock_ref(node)
            cache.inc_lock_ref(last)
            hits.append(hit)
            held[r] = (ids, rows, last, protected)
        for r in group:
            ids, rows, node, protected = held.pop(r)
            computed = int(ints.prompt_tokens[r] + ints.output_tokens[r]) - 1
            rows = torch.cat([rows, allocate(computed - len(rows))])
            _, aligned = insert(ids[:computed], rows, protected)
            allocator.free(rows[aligned:])  # the partial last page stays out of the tree
            cache.dec_lock_ref(node)
    return hits, sglang.__version__


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="mooncake-ample", choices=sorted(SCENARIOS))
    parser.add_argument("--save", type=Path, help="write SGLang's hits and the comparison here")
    args = parser.parse_args(argv)
    rows, results, version = [], {}, None
    for blocks in CAPACITIES:
        theirs, version = sglang_hits(args.scenario, blocks, WINDOW)
        ours, evicted = radix_hits(SCENARIOS[args.scenario], blocks, WINDOW)
        same = sum(a == b for a, b in zip(ours, theirs))
        results[str(blocks)] = {"hit_tokens_ours": sum(ours), "hit_tokens_sglang": sum(theirs),
                                "requests_same_hit": same, "requests": len(ours), "blocks_evicted_ours": evicted}
        rows += [{"num_blocks": blocks, "request": r, "hit_tokens_sglang": t} for r, t in enumerate(theirs)]
        print(f"{blocks:>6,} blocks: hit tokens servesim {sum(ours):>9,}  SGLang {sum(theirs):>9,}  "
              f"({sum(ours) / max(sum(theirs), 1) - 1:+.1%}); same hit for {same} of {len(ours)} requests", flush=True)
    if args.save:
        import pandas as pd

        args.save.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(args.save / "hits.csv", index=False)
        meta = {"sglang": version, "scenario": args.scenario, "window": WINDOW, "block_size": BLOCK_SIZE,
                "made_by": f"python bench/sglang_radix_check.py --save {args.save.as_posix()}",
                "comparison": results}
        (args.save / "comparison.json").write_text(json.dumps(meta, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
