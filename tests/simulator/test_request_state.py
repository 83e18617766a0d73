"""Per-request state: the pending-token rule, rejection, and the one-element views of the arrays."""
import copy
import pickle

import numpy as np

from simulator.request import RequestState, int_list


def test_pending_tokens_follow_prefill_decode_and_recompute():
    req = RequestState.create(np.zeros(3), [10, 4, 7], [3, 2, 5], max_model_len=100)
    assert req.pending_tokens_of([0, 1, 2]) == [10, 4, 7]  # whole prompts first
    req.computed_tokens[0] = 6  # a chunk of 6 of request 0's 10 prompt tokens
    req.computed_tokens[1], req.generated_tokens[1] = 4, 1  # request 1 decodes
    req.generated_tokens[2] = 2  # request 2 was preempted after 2 tokens: prompt + 2 to recompute
    assert req.pending_tokens_of([0, 1, 2]) == [4, 1, 9]
    assert [req.pending_tokens(r) for r in range(3)] == [4, 1, 9]
    assert req.is_decoding(np.arange(3)).tolist() == [False, True, False]


def test_int_views_share_the_arrays_memory():
    req = RequestState.create(np.zeros(2), [10, 4], [3, 2], max_model_len=100)
    req.ints.computed_tokens[1] = 3  # written through the view ...
    assert req.computed_tokens[1] == 3  # ... seen in the array
    req.generated_tokens[0] += 2  # written in the array ...
    assert req.ints.generated_tokens[0] == 2 and type(req.ints.generated_tokens[0]) is int  # ... in the view
    for twin in (copy.deepcopy(req), pickle.loads(pickle.dumps(req))):
        twin.ints.computed_tokens[0] = 7  # a copy's views are its own arrays'
        assert twin.computed_tokens[0] == 7 and req.computed_tokens[0] == 0
        assert twin.pending_tokens(1) == 1


def test_rejections_keep_the_first_reason():
    req = RequestState.create(np.zeros(3), [0, 5, 90], [4, 0, 20], max_model_len=100)
    assert req.reject_reason.tolist() == ["empty prompt", "no output tokens",
                                          "prompt + output tokens exceed max_model_len=100"]


def test_int_list_takes_lists_and_arrays():
    ids = [3, 1, 2]
    assert int_list(ids) is ids  # the hot path's lists pass through untouched
    converted = int_list(np.array(ids))
    assert converted == ids and all(type(x) is int for x in converted)
