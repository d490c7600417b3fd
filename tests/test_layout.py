"""Pure layout functions: pp ranges, vocab padding, kv duplication, qkv split/merge, validation."""

import pytest
import torch

from trtbuild.common.layout import (Dims, Mapping, dup_kv, kv_heads_per_rank, merge_qkv, pad_vocab_size,
                                     pp_layers, rank_layout, split, split_qkv, validate_dims)
from trtbuild.common.errors import ConfigError


def test_pp_layers_matches_tensor_split():
    for n in (1, 3, 7, 32, 80):
        for pp in (1, 2, 3, 4):
            if pp > n:
                continue
            want = [list(c.tolist()) for c in torch.tensor_split(torch.arange(n), pp)]
            assert [list(pp_layers(n, pp, p)) for p in range(pp)] == want


def test_pad_vocab_size():
    assert pad_vocab_size(32000, 8) == 32000
    assert pad_vocab_size(101, 2) == 102
    assert pad_vocab_size(101, 4) == 104
    assert pad_vocab_size(49152, 3) == 49152


def test_dup_kv_repeats_each_head():
    # 2 kv heads of size 2, tp 4 -> each head twice, in order
    w = torch.tensor([[0.0], [1.0], [10.0], [11.0]])  # [nkv*d, 1]
    assert dup_kv(w, 2, 4).flatten().tolist() == [0, 1, 0, 1, 10, 11, 10, 11]
    assert dup_kv(w, 2, 2) is w


def test_split_qkv_per_rank_layout():
    # nh=4, nkv=2, d=1, tp=2: rank r gets q heads [2r, 2r+1], k head r, v head r
    q = torch.arange(4.0)[:, None]
    k = torch.arange(10.0, 12.0)[:, None]
    v = torch.arange(20.0, 22.0)[:, None]
    assert split_qkv(q, k, v, 2, 2, 0).flatten().tolist() == [0, 1, 10, 20]
    assert split_qkv(q, k, v, 2, 2, 1).flatten().tolist() == [2, 3, 11, 21]
    # tp=4 > nkv=2: kv head 0 goes to ranks 0 and 1
    assert split_qkv(q, k, v, 2, 4, 1).flatten().tolist() == [1, 10, 20]
    assert split_qkv(q, k, v, 2, 4, 2).flatten().tolist() == [2, 11, 21]


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
def test_merge_qkv_inverts_split(tp):
    dims = Dims(hidden_size=16, num_layers=1, num_heads=8, num_kv_heads=2, head_size=2,
                intermediate_size=16, vocab_size=10)
    q, k, v = torch.randn(16, 16), torch.randn(4, 16), torch.randn(4, 16)
    shards = [split_qkv(q, k, v, 2, tp, r) for r in range(tp)]
    mq, mk, mv = merge_qkv(shards, dims)
    assert torch.equal(mq, q) and torch.equal(mk, k) and torch.equal(mv, v)


def test_merge_qkv_rejects_inconsistent_duplicates():
    dims = Dims(16, 1, 4, 1, 4, 16, 10)
    q, k, v = torch.randn(16, 16), torch.randn(4, 16), torch.randn(4, 16)
    shards = [split_qkv(q, k, v, 1, 2, r) for r in range(2)]
    shards[1][8] += 1  # rows 8..11 are k: corrupt rank 1's copy of the kv head
    with pytest.raises(ConfigError, match="duplicated kv head 0 differs"):
        merge_qkv(shards, dims)


def test_split_is_never_uneven():
    with pytest.raises(ConfigError, match="cannot split dim 0 of size 5 evenly across tp=2"):
        split(torch.zeros(5, 3), 2, 0, 0)


@pytest.mark.parametrize("dims,mapping,msg", [
    (Dims(64, 2, 6, 6, 8, 96, 50), Mapping(4, 1), "tp=4 does not divide num_attention_heads=6"),
    (Dims(64, 2, 8, 3, 8, 96, 50), Mapping(1, 1), "num_key_value_heads=3 does not divide"),
    (Dims(64, 2, 12, 6, 8, 96, 50), Mapping(4, 1), "tp=4 and num_key_value_heads=6"),
    (Dims(64, 2, 8, 8, 8, 90, 50), Mapping(4, 1), "tp=4 does not divide intermediate_size=90"),
    (Dims(64, 2, 8, 8, 8, 96, 50), Mapping(1, 3), "pp=3 exceeds num_hidden_layers=2"),
])
def test_validate_dims(dims, mapping, msg):
    with pytest.raises(ConfigError, match=msg):
        validate_dims(dims, mapping)


def test_rank_layout_pp_placement():
    dims = Dims(8, 3, 2, 2, 4, 16, 11)
    m = Mapping(tp_size=2, pp_size=2)
    first, last = rank_layout(dims, m, 0), rank_layout(dims, m, 3)
    assert "transformer.vocab_embedding.weight" in first and "lm_head.weight" not in first
    assert "transformer.vocab_embedding.weight" not in last and last["lm_head.weight"] == (6, 8)
    assert {k.split(".")[2] for k in first if k.startswith("transformer.layers.")} == {"0", "1"}
    assert {k.split(".")[2] for k in last if k.startswith("transformer.layers.")} == {"0"}
    assert kv_heads_per_rank(2, 2) == 1 and kv_heads_per_rank(2, 8) == 1 and kv_heads_per_rank(8, 2) == 4
