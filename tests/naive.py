"""Independent, deliberately naive references for the TRIME formulas.

Loops over tokens and memory entries; builds the full Eq. 5/6 distribution over
the vocabulary explicitly. Shares no code with ``trime``.
"""

import math

import torch


def local_memory(T, valid_keys):
    """M_local(c_t) of Eq. 2 as explicit lists: j < t with a real label."""
    return [[j for j in range(t) if valid_keys[j]] for t in range(T)]


def long_memory(segment_docs, segment_order, valid_keys):
    """M_local ∪ M_long (Eq. 2 + 3) as explicit lists of (segment, position) pairs.

    segment_docs[s]: document of segment s; segment_order[s]: its index within the
    document; valid_keys[s][j]: position j of segment s has a real label.
    Returns memory[s][t] for every segment s and position t.
    """
    S, T = len(segment_docs), len(valid_keys[0])
    memory = []
    for s in range(S):
        per_position = []
        for t in range(T):
            entries = []
            for s2 in range(S):
                if segment_docs[s2] != segment_docs[s]:
                    continue
                for j in range(T):
                    earlier = segment_order[s2] < segment_order[s] or (s2 == s and j < t)
                    if earlier and valid_keys[s2][j]:
                        entries.append((s2, j))
            per_position.append(entries)
        memory.append(per_position)
    return memory


def naive_loss_over_memory(vocab_scores, g, targets, memory, pad, detach_keys=False, temperature=1.0,
                           label_smoothing=0.0):
    """Sum of -log P(target) (Eq. 5) with memory[s][t] = list of (segment, position) keys;
    ``detach_keys``: the keys are constants (no gradient), the queries are not. With
    ``label_smoothing`` ε: (1 - ε - ε/(V-1)) (-log P(target)) + ε/(V-1) Σ_v -log p_vocab(v)."""
    B, T, _ = vocab_scores.shape
    flat_g, flat_targets = g.reshape(B * T, -1), targets.reshape(-1)
    if detach_keys:
        flat_g = flat_g.detach()
    total = vocab_scores.new_zeros((), dtype=torch.float64)
    for s in range(B):
        for t in range(T):
            if int(targets[s, t]) == pad:
                continue
            flat_memory = [s2 * T + j for s2, j in memory[s][t]]
            p = eq6_distribution(vocab_scores[s, t], g[s, t], flat_g, flat_targets, flat_memory,
                                 temperature)
            nll = -torch.log(p[int(targets[s, t])])
            if label_smoothing:
                V = vocab_scores.shape[-1]
                p_vocab = torch.exp(vocab_scores[s, t].double())
                p_vocab = p_vocab / p_vocab.sum()
                smooth = sum(-torch.log(p_vocab[v]) for v in range(V))
                eps_i = label_smoothing / (V - 1)
                nll = (1 - label_smoothing - eps_i) * nll + eps_i * smooth
            total = total + nll
    return total


def eq6_distribution(vocab_scores_t, query_t, keys, labels, memory_t, temperature=1.0):
    """P(. | c_t) over the vocabulary, built word by word (Eq. 5 / Eq. 6)."""
    d = query_t.shape[-1]
    unnorm = torch.exp(vocab_scores_t.double()).clone()
    for j in memory_t:
        sim = torch.dot(query_t.double(), keys[j].double()) / math.sqrt(d) / temperature
        unnorm[int(labels[j])] = unnorm[int(labels[j])] + torch.exp(sim)
    return unnorm / unnorm.sum()


def naive_trime_loss(vocab_scores, g, targets, pad, temperature=1.0):
    """Sum over non-pad tokens of -log P(target) with local memory.

    vocab_scores [B, T, V] unnormalised scores s_w; g [B, T, d]; targets [B, T].
    """
    B, T, _ = vocab_scores.shape
    total = vocab_scores.new_zeros((), dtype=torch.float64)
    for b in range(B):
        valid = [int(targets[b, j]) != pad for j in range(T)]
        memory = local_memory(T, valid)
        for t in range(T):
            if not valid[t]:
                continue
            p = eq6_distribution(vocab_scores[b, t], g[b, t], g[b], targets[b], memory[t], temperature)
            total = total - torch.log(p[int(targets[b, t])])
    return total


def adaptive_vocab_scores(asm, features):
    """Unnormalised scores log Z_head + log p(w) for every word of a fairseq AdaptiveSoftmax.

    Built cluster by cluster from the head and tail modules (differentiable,
    unlike fairseq's in-place ``get_log_prob``).
    """
    B, T, C = features.shape
    x = features.contiguous().view(-1, C)
    head = asm.head(x).double()
    log_z = head.logsumexp(-1, keepdim=True)
    head_log_probs = head - log_z
    shortlist = asm.cutoff[0]
    columns = [head_log_probs[:, :shortlist]]
    for i, tail in enumerate(asm.tail):
        within = torch.log_softmax(tail(x).double(), dim=-1)
        columns.append(head_log_probs[:, shortlist + i: shortlist + i + 1] + within)
    log_probs = torch.cat(columns, dim=-1)
    return (log_probs + log_z).view(B, T, -1)


def cache_distribution(vocab_scores_t, query_t, keys, labels, memory_t, lam, theta):
    """(1-λ) p_LM + λ p_cache (Grave et al., 2017), word by word; p_LM alone without memory."""
    p_lm = torch.softmax(vocab_scores_t.double(), dim=-1)
    if not memory_t:
        return p_lm
    cache = torch.zeros_like(p_lm)
    for j in memory_t:
        cache[int(labels[j])] += torch.exp(theta * torch.dot(query_t.double(), keys[j].double()))
    return (1 - lam) * p_lm + lam * cache / cache.sum()


def fifo_stream_memory(rows, size, reset):
    """Memory of every query when windows are scored in stream order with a FIFO of `size`.

    rows: list of dicts with window_start (label offset of position 0), labels, valid,
    scored (lists over window positions) and docs (document of each position's label).
    Returns, per row, per position, a list of ("window", j) and ("history", h) entries,
    where h indexes the list of all scored positions so far (offset, label, doc, row, j).
    """
    history, memory = [], []
    for row in rows:
        current = [h for h in range(len(history))
                   if not reset or history[h][2] == history[-1][2]]
        fifo = current[-size:] if size else []
        per_position = []
        for t in range(len(row["labels"])):
            entries = [("history", h) for h in fifo
                       if history[h][0] < row["window_start"]
                       and (not reset or history[h][2] == row["docs"][t])]
            entries += [("window", j) for j in range(t) if row["valid"][j]]
            per_position.append(entries)
        memory.append(per_position)
        for t in range(len(row["labels"])):
            if row["scored"][t]:
                history.append((row["window_start"] + t, row["labels"][t], row["docs"][t],
                                len(memory) - 1, t))
    return memory, history


def knnlm_distribution(vocab_scores_t, retrieved_sims, retrieved_labels, lam, temperature):
    """kNN-LM (Khandelwal et al., 2020): (1-λ) p_LM + λ p_kNN, entry by entry."""
    p_lm = torch.softmax(vocab_scores_t.double(), dim=-1)
    knn = torch.zeros_like(p_lm)
    for sim, label in zip(retrieved_sims.tolist(), retrieved_labels.tolist()):
        if sim != float("-inf"):
            knn[int(label)] += math.exp(sim / temperature)
    if knn.sum() == 0:
        return p_lm
    return (1 - lam) * p_lm + lam * knn / knn.sum()


def trime_ext_distribution(vocab_scores_t, query_t, keys, labels, memory_t, retrieved_sims,
                           retrieved_labels, tau, lam=0.0, tau_prime=1.0, interp_span=True):
    """TrimeLM_ext (Appendix A): Eq. 6 over M_eval = memory_t (keys) ∪ retrieved entries
    (sim given), then Eq. 8-9: (1-λ) P + λ P' with P' over M_eval (or the retrieved entries
    only) at temperature τ′."""
    d = query_t.shape[-1]
    span = [(float(torch.dot(query_t.double(), keys[j].double())) / math.sqrt(d), int(labels[j]))
            for j in memory_t]
    ext = [(s, int(w)) for s, w in zip(retrieved_sims.tolist(), retrieved_labels.tolist())
           if s != float("-inf")]
    unnorm = torch.exp(vocab_scores_t.double()).clone()
    for sim, word in span + ext:
        unnorm[word] += math.exp(sim / tau)
    p = unnorm / unnorm.sum()
    interp_entries = (span + ext) if interp_span else ext
    if lam == 0 or not interp_entries:
        return p
    p_prime = torch.zeros_like(p)
    for sim, word in interp_entries:
        p_prime[word] += math.exp(sim / tau_prime)
    return (1 - lam) * p + lam * p_prime / p_prime.sum()


def brute_force_knn(queries, keys, k, metric):
    """Top-k rows of keys for each query by explicit similarity; (sims, rows), ties by row."""
    out_sims, out_rows = [], []
    for q in queries.double():
        sims = []
        for row, key in enumerate(keys.double()):
            sim = float(torch.dot(q, key)) if metric == "ip" else -float(((q - key) ** 2).sum())
            sims.append((-sim, row))
        best = sorted(sims)[:k]
        out_sims.append([-s for s, _ in best])
        out_rows.append([r for _, r in best])
    return torch.tensor(out_sims, dtype=torch.float64), torch.tensor(out_rows)


def top_k_memory(g, memory, k):
    """Each query's ``k`` most similar keys of its memory (by g·g', sorted explicitly)."""
    B, T, _ = g.shape
    flat = g.detach().reshape(B * T, -1).double()
    return [[sorted(memory[s][t], key=lambda key: -float(flat[s * T + t] @ flat[key[0] * T + key[1]]))[:k]
             for t in range(T)] for s in range(B)]
