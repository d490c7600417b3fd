"""The decoding core: one step of propose -> verify -> accept -> advance, for every decoder.

Glossary (Medusa: Cai et al., 2024, arXiv 2401.10774; lookahead: Fu et al., 2024, arXiv 2402.02057):
- root: a row's last emitted token, not yet in its KV cache; node 0 of every step;
- draft: the step's tokens after the root, guesses of the text that follows it (plain: none;
  Medusa: the heads' top-k tokens arranged as a tree; lookahead: a Jacobi window and pool n-grams);
- node: one token of a step, root or draft, in cache slot L + t at position L + depth[t], seeing the
  row's context and the step nodes its local mask allows (a `Draft` holds all of this);
- chain: draft nodes that verification may accept one after another (a root-to-leaf path of the
  Medusa tree, a window column or an n-gram of lookahead);
- accepted path: the root plus the draft nodes accepted along one chain; their KV entries are moved
  to consecutive slots, the other slots are overwritten by later steps;
- bonus token: the model's own choice after the last accepted node; it becomes the next root.

A step emits the accepted draft tokens plus the bonus token. The acceptance rule is one for all
decoders, in `generate`, the server and the tuners alike:
- lossless (the default): walking from the root, each verified position's token is chosen by the
  request's own `TokenPicker` from that position's logits (greedy: the argmax; else a sample, with
  every per-request rule); the walk moves on while some chain holds the chosen token next. Every
  emitted token is the model's own choice given the tokens before it, so the output distribution is
  plain decoding's (greedy: token for token);
- typical acceptance (`TypicalAcceptance`, Medusa's rule, opt-in, not lossless): along each chain a
  draft token is accepted while its probability under the tempered model exceeds
  min(posterior_threshold, posterior_alpha * exp(-entropy)); the chain with the most accepted
  tokens wins (ties: the highest log probability), then the bonus token is sampled.

`decode_step(model, cache, rows)` runs one step for rows 0..B-1 of `cache`: pad the drafts to the
longest, one forward pass, verify, keep the accepted KV, advance each decoder. The scheduler
(`trtbuild.runtime.scheduler`) owns admission, compaction, cancellation and threads around it, and
offline decoding is the scheduler with everything admitted at once. A new proposer is a new
`Decoder`, nothing else.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from trtbuild.common.errors import GenerationError
from trtbuild.common.lookahead.layout import StepLayout, step_layout
from trtbuild.common.lookahead.pool import NgramPool
from trtbuild.common.lookahead.spec import LookaheadSpec
from trtbuild.common.medusa.choices import MedusaSpec, parse_choices, presets
from trtbuild.common.medusa.tree import TreeBuffers, tree_buffers
from trtbuild.common.spec import DecodingSpec, Speculation
from trtbuild.runtime.generate import FinishReason, Request, Result, attention_mask, stop_reason
from trtbuild.runtime.model import KVCache, Model
from trtbuild.runtime.sampling import TokenPicker

def step_tokens(decoding: DecodingSpec) -> int:
    """Tokens one step of this decoding verifies per row (root included)."""
    if isinstance(decoding, MedusaSpec):
        return decoding.nodes
    return decoding.decoding_tokens if decoding is not None else 1


@dataclass(frozen=True)
class TypicalAcceptance:
    """Medusa's typical acceptance for temperature > 0 (opt-in; not lossless; TensorRT-LLM has none):
    a draft token is accepted iff p(token) > min(posterior_threshold, posterior_alpha * exp(-entropy))."""

    posterior_threshold: float = 0.09
    posterior_alpha: float = 0.3


@dataclass(frozen=True)
class Draft:
    """One row's step: the root and its draft nodes."""

    tokens: tuple[int, ...]  # [T] node 0 is the root
    depths: tuple[int, ...]  # [T] position offset of each node from the root
    local: torch.Tensor  # [T, T] bool: node t sees node u (itself included)
    chains: tuple[tuple[int, ...], ...]  # node ids after the root, in verification order

    @property
    def size(self) -> int:
        return len(self.tokens)


def longest_chain(chains: Sequence[Sequence[int]], tokens: Sequence[int],
                  choose: Callable[[int], int]) -> tuple[list[int], int]:
    """The lossless walk: from the root (node 0), take the model's choice `choose(node)` at each node
    and continue on the first chain that still matches and holds it next.
    Returns (accepted node ids starting with 0, the choice at the last accepted node)."""
    path, alive, d = [0], list(chains), 0
    while True:
        t = choose(path[-1])
        alive = [c for c in alive if len(c) > d and tokens[c[d]] == t]
        if not alive:
            return path, t
        path.append(alive[0][d])
        d += 1


def typical_path(chains: Sequence[Sequence[int]], tokens: Sequence[int], logits: torch.Tensor, temperature: float,
                 rule: TypicalAcceptance) -> list[int]:
    """Typical acceptance over the chains; logits [T, V]. Returns the accepted node ids from the root:
    the chain prefix with the most accepted tokens (ties: highest log probability, then chain order)."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # [T, V]
    entropy = -(probs * torch.log(probs + 1e-5)).sum(-1)  # [T]
    threshold = torch.minimum(torch.full_like(entropy, rule.posterior_threshold),
                              rule.posterior_alpha * torch.exp(-entropy)).tolist()
    best, best_key = [0], (0, -math.inf)
    for chain in chains:
        parent, k, logp = 0, 0, 0.0
        for node in chain:
            p = float(probs[parent, tokens[node]])
            if not p > threshold[parent]:
                break
            k, logp, parent = k + 1, logp + math.log(p + 1e-12), node
        if (k, logp) > best_key:
            best, best_key = [0, *chain[:k]], (k, logp)
    return best


class Evidence:
    """Acceptance seen by every row of one decoding on one engine, per quantity i (a Medusa node's
    acceptance given its parent's; what lookahead's candidate sets and window add): the prior a row
    starts from, so a new request begins with what the engine has measured, not a guess. Starts at
    `mean` with weight 2. `estimate` blends a row's own evidence with it at weight `ROW_PRIOR` and adds
    an upper-confidence bonus, `CONFIDENCE` * sqrt(mean / weight) (capped at `cap`): an option that
    stopped being drafted after a few unlucky steps is tried again while the evidence against it is
    thin, and the bonus fades as the engine's evidence grows (a governor that trusted a noisy low estimate would
    never draft again, so never learn it was wrong)."""

    ROW_PRIOR = 4.0
    CONFIDENCE = 0.5  # the bonus's scale

    def __init__(self, n: int, mean: float = 0.5, cap: float = 1.0) -> None:
        self.sum, self.weight, self.cap = [2.0 * mean] * n, [2.0] * n, cap

    def add(self, i: int, x: float) -> None:
        self.sum[i] += x
        self.weight[i] += 1.0

    def estimate(self, i: int, own_sum: float, own_weight: float) -> float:
        m = (own_sum + self.ROW_PRIOR * self.sum[i] / self.weight[i]) / (own_weight + self.ROW_PRIOR)
        return min(m + self.CONFIDENCE * math.sqrt(m / self.weight[i]), self.cap)


class Decoder:
    """One request's proposer. `propose` gives the step's nodes; `advance` updates the proposer's state
    with the verified step (the model's argmax at every node, the tokens emitted)."""

    uses_heads = False  # propose needs the Medusa heads' top-k at the root's hidden state

    def propose(self, root: int, heads: torch.Tensor | None, budget: int | None = None) -> Draft:
        """budget: draft nodes the governor grants this step (None: all of them; 0: the root alone)."""
        raise NotImplementedError

    def advance(self, draft: Draft, path: list[int], pred: list[int], emitted: list[int]) -> None:
        """path: the accepted node ids from the root; pred: [T] the model's argmax at each node;
        emitted: the accepted draft tokens and the bonus."""

    def options(self) -> list[tuple[int, float]] | None:
        """The governor's curve, [(draft nodes, expected accepted tokens)] from (0, 0.0), or None: this
        decoder always drafts all it has (its tokens are a fixed cost of the step)."""
        return None


_SINGLE = torch.ones(1, 1, dtype=torch.bool)


class PlainDecoder(Decoder):
    """No draft: the root alone."""

    def propose(self, root: int, heads: torch.Tensor | None, budget: int | None = None) -> Draft:
        return Draft((root,), (0,), _SINGLE, ())

    def options(self) -> list[tuple[int, float]] | None:
        return [(0, 0.0)]


class MedusaDecoder(Decoder):
    """A Medusa tree: node i holds head (depth - 1)'s rank-th token at the root's hidden state.

    Per request it estimates each node's acceptance given its parent's (its own steps' counts on the
    engine's `Evidence` as the prior), so a node's path probability is the product along its path and
    the expected accepted length of a prefix-closed set of nodes is the sum of their path
    probabilities. With a budget of k nodes it drafts the k nodes of highest path probability
    (prefix-closed: a child's is never above its parent's; ties in node order)."""

    uses_heads = True

    def __init__(self, tree: TreeBuffers, evidence: Evidence | None = None) -> None:
        self.tree = tree
        n = tree.num_nodes
        self.evidence = evidence if evidence is not None else Evidence(n)
        self.hits, self.tries = [0.0] * n, [0.0] * n  # this request's own
        self.nodes: tuple[int, ...] = tuple(range(n))  # full-tree ids of the last draft's nodes

    def _ranked(self) -> list[tuple[float, int]]:
        """(path probability, node id) of every draft node, best first."""
        t, prob, ev = self.tree, [1.0] * self.tree.num_nodes, self.evidence
        for i in range(1, t.num_nodes):  # parents come first in node order
            prob[i] = prob[t.parents[i]] * ev.estimate(i, self.hits[i], self.tries[i])
        return sorted(((prob[i], i) for i in range(1, t.num_nodes)), key=lambda x: (-x[0], x[1]))

    def options(self) -> list[tuple[int, float]] | None:
        curve, e = [(0, 0.0)], 0.0
        for k, (p, _) in enumerate(self._ranked(), 1):
            e += p
            curve.append((k, e))
        return curve

    def propose(self, root: int, heads: torch.Tensor | None, budget: int | None = None) -> Draft:
        """heads: [K, k >= tree.top_k] the top-k token ids of each Medusa head, best first."""
        t = self.tree
        if budget is None or budget >= t.num_nodes - 1:
            self.nodes = tuple(range(t.num_nodes))
            return Draft((root, *heads[t.head, t.rank].tolist()), t.depths, t.mask, t.chains)
        self.nodes = (0, *sorted(i for _, i in self._ranked()[:budget]))
        sub = tree_buffers(tuple(t.paths[i - 1] for i in self.nodes[1:]))
        if not sub.paths:
            return Draft((root,), (0,), _SINGLE, ())
        return Draft((root, *heads[sub.head, sub.rank].tolist()), sub.depths, sub.mask, sub.chains)

    def advance(self, draft: Draft, path: list[int], pred: list[int], emitted: list[int]) -> None:
        """Each drafted node whose parent was accepted was tried; accepted if on the path."""
        full = self.nodes
        on_path = {full[j] for j in path}
        parents = self.tree.parents
        for j in range(1, len(full)):
            i = full[j]
            if parents[i] in on_path:
                self.tries[i] += 1
                self.hits[i] += i in on_path
                self.evidence.add(i, float(i in on_path))


def chain_match(chain: Sequence[int], tokens: Sequence[int], pred: Sequence[int]) -> int:
    """Tokens of `chain` that greedy verification would accept on their own: the leading nodes whose
    token is the model's argmax at the node before them (the root first)."""
    parent, k = 0, 0
    for node in chain:
        if tokens[node] != pred[parent]:
            break
        parent, k = node, k + 1
    return k


class LookaheadDecoder(Decoder):
    """Lookahead: a Jacobi window and an n-gram pool (trtbuild.common.lookahead.layout).

    After each step that runs the window it advances one Jacobi iteration: each column's last-level
    output becomes a new level (the oldest is dropped once there are N - 1), and each full column adds
    one n-gram, keyed by its level-0 token, to the pool. The pool starts with the prompt's n-grams and
    gets those the emitted tokens complete. Level 0 starts as the root plus W - 1 tokens drawn from the
    prompt.

    Options (the governor's, `options`): no draft; the first g' <= G pool candidates alone (the window
    waits); the whole step. Per request it estimates, from its own steps on the engine's `Evidence`
    as the prior (quantity g' - 1: the first g' candidates; quantity G: the window), the tokens the
    first g' candidates would have accepted (every verified candidate's greedy match is known after
    the step, so every g' <= the verified ones learns) and what the window's column adds on top of the
    best candidate."""

    def __init__(self, spec: LookaheadSpec, prompt: Sequence[int], first: int,
                 evidence: Evidence | None = None) -> None:
        self.w, self.n, self.g = spec.as_tuple()
        self.seq = list(prompt) + [first]
        self.pool = NgramPool(self.n, self.g) if self.n >= 2 else None
        if self.pool is not None:
            self.pool.add_sequence(self.seq)
        rng = random.Random(0)
        self.levels = [[first] + [rng.choice(prompt) for _ in range(self.w - 1)]]
        self.layout: StepLayout | None = None  # of the step proposed last
        self.windowed = True  # the last step ran the window
        self.evidence = evidence if evidence is not None else Evidence(self.g + 1, cap=self.n - 1)
        self.pool_gain = [[0.0, 0.0] for _ in range(self.g)]  # [g' - 1] (sum, steps) of this request's own
        self.window_gain = [0.0, 0.0]  # what the window's column accepted beyond the best candidate

    def _candidates(self) -> list[tuple[int, ...]]:
        """The pool's continuations of the root (the last token emitted)."""
        return self.pool.candidates(self.seq[-1], self.g) if self.pool is not None else []

    def _window_tokens(self) -> int:
        return self.w * len(self.levels) - 1

    def options(self) -> list[tuple[int, float]] | None:
        c, ev = len(self._candidates()), self.evidence
        curve = [(0, 0.0)] + [((k + 1) * (self.n - 1), ev.estimate(k, *self.pool_gain[k])) for k in range(c)]
        curve.append((self._window_tokens() + c * (self.n - 1), curve[-1][1] + ev.estimate(self.g, *self.window_gain)))
        return curve

    def propose(self, root: int, heads: torch.Tensor | None, budget: int | None = None) -> Draft:
        self.levels[0][0] = root  # == self.seq[-1]
        cands = self._candidates()
        full = self._window_tokens() + len(cands) * (self.n - 1)
        self.windowed = budget is None or budget >= full
        if not self.windowed:  # the candidates that fit, without the window
            cands = cands[:budget // (self.n - 1)]
            lay = self.layout = step_layout(1, 1, len(cands), self.n - 1)
            return Draft((root, *(t for c in cands for t in c)), lay.depths, lay.mask, lay.chains)
        lay = self.layout = step_layout(self.w, len(self.levels), len(cands), self.n - 1)
        tokens = [root] + [t for lev, row in enumerate(self.levels) for t in (row[1:] if lev == 0 else row)]
        tokens += [t for c in cands for t in c]
        return Draft(tuple(tokens), lay.depths, lay.mask, lay.chains)

    def advance(self, draft: Draft, path: list[int], pred: list[int], emitted: list[int]) -> None:
        lay = self.layout
        has_column = self.windowed and len(self.levels) > 1
        matches = [chain_match(c, draft.tokens, pred) for c in lay.chains[1 if has_column else 0:]]
        best = 0
        for k, m in enumerate(matches):  # what the first k + 1 candidates would have accepted
            best = max(best, m)
            self.pool_gain[k][0] += best
            self.pool_gain[k][1] += 1
            self.evidence.add(k, best)
        if has_column:  # (a window still filling its levels has no column to verify yet)
            extra = max(chain_match(lay.chains[0], draft.tokens, pred) - best, 0)
            self.window_gain[0] += extra
            self.window_gain[1] += 1
            self.evidence.add(self.g, extra)
        if self.windowed:
            new = [pred[node] for node in lay.window[-1]]  # each column's next guess
            if len(self.levels) == self.n - 1:
                for i in range(self.w):
                    col = [draft.tokens[lay.window[m][i]] for m in range(len(self.levels))]
                    self.pool.add(col[0], col[1:] + [new[i]])
                self.levels = self.levels[1:] + [new]
            else:
                self.levels.append(new)
        start = len(self.seq)
        self.seq.extend(emitted)
        if self.pool is not None:
            self.pool.add_sequence(self.seq, start - self.n + 1)


def make_decoder(decoding: DecodingSpec, prompt: Sequence[int], first: int,
                 evidence: dict[DecodingSpec, Evidence] | None = None) -> Decoder:
    """The decoder of one request; `evidence`: the engine's acceptance so far per decoding (shared by
    its rows, filled as they go; None: a prior of this request alone)."""
    shared = evidence.get(decoding) if evidence is not None else None
    if isinstance(decoding, MedusaSpec):
        dec: Decoder = MedusaDecoder(tree_buffers(decoding.choices), shared)
    elif isinstance(decoding, LookaheadSpec) and decoding.max_ngram_size > 1:
        dec = LookaheadDecoder(decoding, prompt, first, shared)
    else:
        return PlainDecoder()
    if evidence is not None:  # the first row of this decoding starts the engine's record
        evidence.setdefault(decoding, dec.evidence)
    return dec


def check_decoding(model: Model, decoding: DecodingSpec) -> None:
    """Refuse a decoding the model cannot run (one line)."""
    if not isinstance(decoding, MedusaSpec):
        return
    if not model.medusa:
        raise GenerationError("this checkpoint has no Medusa heads (convert it with --medusa)")
    tree = tree_buffers(decoding.choices)
    if tree.max_depth > len(model.medusa):
        raise GenerationError(f"medusa choices: tree depth {tree.max_depth} exceeds the {len(model.medusa)} heads")
    if tree.top_k > model.cfg.dims.vocab_size:  # torch.topk over the vocabulary (parse_choices also caps at TOP_K_MAX)
        raise GenerationError(f"medusa choices: a node takes candidate {tree.top_k - 1} of a head, but the "
                              f"vocabulary has {model.cfg.dims.vocab_size} tokens")


def resolve_decoding(model: Model, medusa_choices: str | list | None = None, lookahead: LookaheadSpec | None = None,
                     no_medusa: bool = False, no_lookahead: bool = False) -> DecodingSpec:
    """The one precedence rule for how a checkpoint or engine decodes (generate, the build self-check
    and the scheduler's default): a Medusa checkpoint decodes with its stored tree (or `medusa_choices`)
    unless `no_medusa`; otherwise lookahead with `lookahead` or the stored (W, N, G) (a request's
    must be <= the stored one) unless `no_lookahead`; otherwise plain (None)."""
    if lookahead is not None and no_lookahead:
        raise GenerationError("lookahead settings and no-lookahead contradict each other")
    medusa = bool(model.medusa) and not no_medusa
    cfg = model.cfg
    if medusa_choices is not None and not medusa:
        raise GenerationError("medusa choices need a Medusa checkpoint (and Medusa decoding not switched off)")
    if lookahead is not None and medusa:
        raise GenerationError("lookahead on a Medusa checkpoint needs Medusa decoding switched off (--no-medusa)")
    if medusa:
        # a Medusa engine with no tree decodes with mc_sim_7b_63, as the C++ backend does:
        #   triton-inference-server/tensorrtllm_backend@c2e65b8:inflight_batcher_llm/src/model_instance_state.cc:596-608
        tree = medusa_choices if medusa_choices is not None else (
            [list(p) for p in cfg.medusa_choices] if cfg.medusa_choices else [list(p) for p in presets()["mc_sim_7b_63"]])
        return MedusaSpec(parse_choices(tree, len(model.medusa), cfg.max_draft_len or None, cfg.dims.vocab_size).choices)
    if lookahead is not None:
        if cfg.lookahead is not None:
            cfg.lookahead.check_request(lookahead)
        return lookahead if lookahead.max_ngram_size > 1 else None
    if not no_lookahead and cfg.lookahead is not None and cfg.lookahead.max_ngram_size > 1:
        return cfg.lookahead
    return None


@dataclass(kw_only=True)
class Row:
    """One request being decoded: its decoder, cache length, emitted tokens, stop rules and counters."""

    request: Request
    decoding: DecodingSpec
    picker: TokenPicker
    speculation: Speculation = "always"  # how this row drafts (the engine's, or the request's own)
    typical: TypicalAcceptance | None = None
    decoder: Decoder | None = None  # made at prefill (lookahead starts from the first token)
    length: int = 0  # tokens in the row's cache (accepted ones: slot == position)
    outs: list[int] = field(default_factory=list)  # emitted tokens (an end id it stopped at included)
    done: FinishReason | None = None
    steps: int = 0  # decode steps (forward passes after the prefill)
    accepted: int = 0  # draft tokens accepted
    drafted: int = 0  # draft tokens verified
    h_last: torch.Tensor | None = None  # [H] final hidden state of the last accepted token

    @property
    def step_tokens(self) -> int:
        return step_tokens(self.decoding)

    def emit(self, tokens: list[int]) -> list[int]:
        """Append tokens until a stop rule holds; returns the ones that are output (not an end id)."""
        new = []
        for t in tokens:
            self.outs.append(t)
            self.done = stop_reason(self.outs, self.request)
            if self.done != "end_id":
                new.append(t)
            if self.done:
                break
        return new

    def kept(self) -> int:
        """Output tokens so far (an end id the row stopped at is not one)."""
        return len(self.outs) - (self.done == "end_id")

    def result(self) -> Result:
        cum, lps = self.picker.report(len(self.outs), self.kept())
        return Result(tuple(self.outs[:self.kept()]), self.done or "length", self.steps, self.accepted, cum, lps)


def prefill_row(model: Model, cache: KVCache, slot: int, row: Row,
                evidence: dict[DecodingSpec, Evidence] | None = None) -> int:
    """The row's prompt alone into cache row `slot` (slots 0..P-1); returns its first token (chosen by
    the row's picker) and makes its decoder (`make_decoder`'s evidence)."""
    dev, prompt = model.device, row.request.prompt
    P = len(prompt)
    view = KVCache(cache.k[:, slot:slot + 1], cache.v[:, slot:slot + 1])
    mask = attention_mask(0, P, torch.zeros(1, dtype=torch.long, device=dev), model.cfg.sliding_window)
    pos = torch.arange(P, device=dev)[None]
    h = model.hidden(torch.tensor([prompt], device=dev), pos, view, 0, mask)[0, -1]  # [H]
    first = row.picker.pick(model.logits(h[None])[0])
    row.length, row.h_last = P, h
    row.decoder = make_decoder(row.decoding, prompt, first, evidence)
    return first


def draft_attention_mask(local: torch.Tensor, depths: torch.Tensor, lengths: torch.Tensor, span: int,
                         window: int | None = None) -> torch.Tensor:
    """[B, 1, T, span] bool over cache slots 0..span-1.

    local: [B, T, T] bool, step token t may see step token u (t sees itself); depths: [B, T] the
    position offset of each step token; lengths: [B] accepted lengths L_b. Step token t of row b
    sees slots < L_b (its context; with a sliding window only positions less than `window`
    behind it) and slot L_b + u where local[b, t, u].
    """
    B, T, _ = local.shape
    col = torch.arange(span, device=lengths.device)[None, None, :] - lengths[:, None, None]  # [B, 1, span]
    in_step = (col >= 0) & (col < T)
    seen = local.gather(2, col.clamp(0, T - 1).expand(B, T, span))  # [B, T, span]
    context = col < 0
    if window:
        context = context & (depths[:, :, None] - col < window)  # query L + depth, key L + col
    return (context | (in_step & seen)).unsqueeze(1)


def keep_path(cache: KVCache, b: int, start: int, path: list[int]) -> None:
    """Move the KV entries of row b's accepted step tokens (slots start + path[j]) to start + j."""
    if path == list(range(len(path))):
        return
    src = torch.tensor(path, device=cache.k.device) + start
    dst = torch.arange(len(path), device=cache.k.device) + start
    for kv in (cache.k, cache.v):  # [L, B, nkv, S, d]
        row = kv[:, b]
        row[:, :, dst] = row[:, :, src]


def _verify(row: Row, draft: Draft, logits: torch.Tensor, pred: list[int]) -> tuple[list[int], int]:
    """(accepted path from the root, bonus token) of one row; logits [T, V], pred [T] their argmax."""
    picker, sampling = row.picker, row.request.sampling
    if row.typical is not None and not sampling.greedy:
        path = typical_path(draft.chains, draft.tokens, logits, sampling.temperature, row.typical)
        for parent, node in zip(path, path[1:]):  # accepted as drafted: booked as generated, nothing drawn
            picker.observe(draft.tokens[node], logits[parent])
        return path, picker.pick(logits[path[-1]])
    if sampling.greedy and picker.trivial:
        return longest_chain(draft.chains, draft.tokens, pred.__getitem__)
    # the walk asks for the nodes in order and emits every choice: the picker's counts and generated-token
    # count are plain decoding's at each node
    return longest_chain(draft.chains, draft.tokens, lambda node: picker.pick(logits[node]))


def budgets(rows: Sequence[Row], cost=None) -> tuple[list[int | None], float]:
    """(draft tokens per row this step, the draft tokens expected to be accepted): each row as its
    `speculation` says: always = None (all it has), off = 0, auto = the governor's choice
    (`governor.allocate`) from `cost` (a `cost.CostModel`) and the rows' own acceptance estimates, with
    the always rows as a fixed width and a fixed number of tokens."""
    out: list[int | None] = [0 if r.speculation == "off" else None for r in rows]
    auto = [b for b, r in enumerate(rows) if r.speculation == "auto"]
    fixed = [r for r in rows if r.speculation == "always"]  # their tokens, and the tokens they emit (1 +
    # their own mean accepted so far), are the same whatever the others do
    fixed_emitted = sum(r.accepted / r.steps if r.steps else 0.0 for r in fixed)
    if not auto:
        return out, fixed_emitted
    if cost is None:
        raise GenerationError("speculation auto needs a cost model")
    from trtbuild.runtime.governor import allocate

    curves = [rows[b].decoder.options() or [(0, 0.0)] for b in auto]
    chosen, _ = allocate(curves, cost.step_time, fixed_rows=len(fixed),
                         fixed_width=max((r.step_tokens for r in fixed), default=1),
                         fixed_emitted=fixed_emitted, heads=[rows[b].decoder.uses_heads for b in auto],
                         heads_seconds=cost.heads)
    expected = fixed_emitted
    for b, c, k in zip(auto, curves, chosen):
        out[b] = c[k][0]
        expected += c[k][1]
    return out, expected


@dataclass
class StepInfo:
    """What one `decode_step` did: its padded shape and the seconds of its Medusa heads pass."""

    rows: int = 0
    width: int = 0  # tokens per row after padding (root included)
    drafted: int = 0  # draft tokens (padding excluded)
    speculating: int = 0  # rows with a draft
    heads_seconds: float = 0.0  # 0: no heads pass this step


@torch.inference_mode()
def decode_step(model: Model, cache: KVCache, rows: Sequence[Row], budget: Sequence[int | None] | None = None,
                info: StepInfo | None = None) -> list[list[int]]:
    """One step for rows[b] in cache row b (b < len(rows)): pad the drafts, one forward pass, verify,
    keep the accepted KV, advance. budget: draft tokens per row (`budgets`; None: all); info: filled
    with the step's shape. Returns each row's emitted tokens (accepted drafts, then the bonus token;
    the caller applies the stop rules with `Row.emit`)."""
    dev, B = model.device, len(rows)
    budget = list(budget) if budget is not None else [None] * B
    view = KVCache(cache.k[:, :B], cache.v[:, :B])
    heads = None
    need = [b for b, r in enumerate(rows) if r.decoder.uses_heads and budget[b] != 0]
    t0 = time.perf_counter()
    if need:  # one pass of the Medusa heads for every Medusa row
        k = max(r.decoder.tree.top_k for r in (rows[b] for b in need))
        top = model.medusa_logits(torch.stack([rows[b].h_last for b in need])).topk(k, dim=-1).indices  # [n, K, k]
        heads = dict(zip(need, top))
    heads_seconds = time.perf_counter() - t0 if need else 0.0
    drafts = [r.decoder.propose(r.outs[-1], heads.get(b) if heads else None, budget[b]) for b, r in enumerate(rows)]
    T = max(d.size for d in drafts)
    if info is not None:
        info.rows, info.width, info.heads_seconds = B, T, heads_seconds
        info.drafted = sum(d.size - 1 for d in drafts)
        info.speculating = sum(d.size > 1 for d in drafts)
    tokens = torch.zeros(B, T, dtype=torch.long)
    depths = torch.zeros(B, T, dtype=torch.long)
    local = torch.eye(T, dtype=torch.bool)[None].repeat(B, 1, 1)  # padding sees only itself
    lens = torch.tensor([r.length for r in rows], dtype=torch.long)
    for b, d in enumerate(drafts):
        tokens[b, :d.size] = torch.tensor(d.tokens)
        depths[b, :d.size] = torch.tensor(d.depths)
        local[b, :d.size, :d.size] = d.local
    tokens, depths, local, lens = tokens.to(dev), depths.to(dev), local.to(dev), lens.to(dev)
    mask = draft_attention_mask(local, depths, lens, int(lens.max()) + T, model.cfg.sliding_window)
    h = model.hidden(tokens, lens[:, None] + depths, view, lens[:, None] + torch.arange(T, device=dev)[None, :],
                     mask)  # [B, T, H]
    logits = model.logits(h)  # [B, T, V]
    pred = logits.argmax(-1).tolist()
    out = []
    for b, (r, d) in enumerate(zip(rows, drafts)):
        path, bonus = _verify(r, d, logits[b], pred[b])
        r.steps += 1
        r.accepted += len(path) - 1
        r.drafted += d.size - 1
        keep_path(view, b, r.length, path)
        r.length += len(path)
        r.h_last = h[b, path[-1]]
        emitted = [d.tokens[node] for node in path[1:]] + [bonus]
        r.decoder.advance(d, path, pred[b], emitted)
        out.append(emitted)
    return out
