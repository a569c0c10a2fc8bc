"""Batch insertion: parallel candidate search, neighbour selection, reverse-edge merge.

One batch of new nodes (``batch``, int32 node numbers not yet linked) is inserted in two
lock-free phases:

1. ``link_batch``: in parallel over new nodes, search the graph as it stood at the batch's
   start (no old node links to a new one yet, so no search can reach a row being written) and
   write each new node's own out-links (one writer per row).
2. ``reverse_keys`` + ``merge_reverse``: the reverse edges (old node <- new node) are sorted by
   target, and in parallel over targets each target appends its new sources and, if it
   overflows, is pruned once with the heuristic (one writer per target row).

Results depend only on the graph at the batch's start, so the graph is the same whatever the
number of threads.
"""

import numpy as np
from numba import njit, prange

from shoal.kernels import KERNEL, KERNEL_PARALLEL
from shoal.kernels.distance import distance
from shoal.kernels.search import beam_insert, beam_scratch, greedy_descend, next_tag, search_from


@njit(**KERNEL)
def select_neighbors(cand_n, cand_d, count, m, vectors, metric, out_n):
    """HNSW's heuristic (algorithm 4): keep a candidate only if it is closer to the base node
    than to every candidate already kept. Candidates are sorted by distance to the base.

    Writes up to ``m`` nodes to ``out_n``; returns (kept, distance evaluations).
    """
    kept = 0
    evals = 0
    for i in range(count):
        if kept == m:
            break
        c = cand_n[i]
        good = True
        for j in range(kept):
            evals += 1
            if distance(vectors[c], vectors[out_n[j]], metric) < cand_d[i]:
                good = False
                break
        if good:
            out_n[kept] = c
            kept += 1
    return kept, evals


@njit(**KERNEL_PARALLEL)
def link_batch(vectors, levels, links0, deg0, links_up, deg_up, up_offset, batch,
               entry, top_level, m, ef_construction, metric, visited, tags, peers):
    """Phase 1: find and write the out-links of the new nodes ``batch`` on every level they
    share with the current graph (entry ``entry`` at level ``top_level``).

    ``peers`` int32 (len(batch), p), or (0, 0) for none: nodes of the same batch offered as
    extra level-0 candidates (-1 for none). Nodes of one batch cannot find each other by
    searching the graph; when a batch is a run of mutually close rows (a user's batch of
    related documents) they are each other's best neighbours.

    New nodes keep at most ``m`` links per level here. ``visited``/``tags`` are per-worker
    scratch (see ``search_batch``). Returns distance evaluations int64 (len(batch),).
    """
    n = batch.shape[0]
    evals = np.zeros(n, np.int64)
    chunks = visited.shape[0]
    width = links0.shape[1]
    count = vectors.shape[0]
    for c in prange(chunks):
        beam_d, beam_n, beam_x, buf_n, buf_d = beam_scratch(ef_construction, width)
        sel = np.empty(m, np.int32)
        tag = tags[c]
        for i in range(c * n // chunks, (c + 1) * n // chunks):
            q = batch[i]
            level_q = levels[q]
            cur, cur_d, e = greedy_descend(vectors[q], vectors, links_up, deg_up, up_offset,
                                           entry, top_level, level_q, metric, count)
            for level in range(min(level_q, top_level), -1, -1):
                tag = next_tag(visited[c], tag)
                if level == 0:
                    size, e2 = search_from(vectors[q], vectors, links0, deg0, up_offset, 0,
                                           cur, cur_d, ef_construction, metric, count, visited[c],
                                           tag, beam_d, beam_n, beam_x, buf_n, buf_d)
                else:
                    size, e2 = search_from(vectors[q], vectors, links_up, deg_up, up_offset,
                                           level, cur, cur_d, ef_construction, metric, count,
                                           visited[c], tag, beam_d, beam_n, beam_x, buf_n, buf_d)
                if level == 0 and peers.shape[0] > 0:
                    for j in range(peers.shape[1]):
                        r = peers[i, j]
                        if r >= 0:
                            size, _ = beam_insert(beam_d, beam_n, beam_x, size, ef_construction,
                                                  distance(vectors[q], vectors[r], metric), r)
                            e2 += 1
                kept, e3 = select_neighbors(beam_n, beam_d, size, m, vectors, metric, sel)
                e += e2 + e3
                if level == 0:
                    links0[q, :kept] = sel[:kept]
                    deg0[q] = kept
                else:
                    row = up_offset[q] + level - 1
                    links_up[row, :kept] = sel[:kept]
                    deg_up[row] = kept
                cur = beam_n[0]
                cur_d = beam_d[0]
            evals[i] = e
        tags[c] = tag
    return evals


@njit(**KERNEL_PARALLEL)
def nearest_peers(scores, nodes, out):
    """For each row ``i`` of ``scores`` (b, b; larger is nearer), the ``nodes`` of its
    ``out.shape[1]`` highest-scoring columns other than ``i`` itself, in any order, into
    ``out[i]`` (as many as there are; the rest is left as it is)."""
    b = scores.shape[0]
    take = min(out.shape[1], b - 1)
    for i in prange(b):
        best_s = np.empty(take, np.float32)
        best_j = np.empty(take, np.int64)
        size = 0
        worst = 0  # the slot holding the lowest kept score, once all are taken
        for j in range(b):
            if j == i:
                continue
            s = scores[i, j]
            if size < take:
                best_s[size] = s
                best_j[size] = j
                size += 1
                if size == take:
                    worst = 0
                    for t in range(1, take):
                        if best_s[t] < best_s[worst]:
                            worst = t
            elif s > best_s[worst]:
                best_s[worst] = s
                best_j[worst] = j
                worst = 0
                for t in range(1, take):
                    if best_s[t] < best_s[worst]:
                        worst = t
        for t in range(size):
            out[i, t] = nodes[best_j[t]]


@njit(**KERNEL)
def reverse_keys(links, degs, up_offset, levels, batch, level):
    """Sorted int64 keys ``target << 32 | source`` of the reverse edges on ``level`` of the
    new nodes ``batch`` (each key asks to add ``source`` to ``target``'s links)."""
    total = 0
    for q in batch:
        if levels[q] >= level:
            row = q if level == 0 else up_offset[q] + level - 1
            total += degs[row]
    keys = np.empty(total, np.int64)
    k = 0
    for q in batch:
        if levels[q] >= level:
            row = q if level == 0 else up_offset[q] + level - 1
            for j in range(degs[row]):
                keys[k] = (np.int64(links[row, j]) << 32) | q
                k += 1
    keys.sort()
    return keys


@njit(**KERNEL_PARALLEL)
def merge_reverse(keys, vectors, links, degs, up_offset, level, metric):
    """Phase 2: add the reverse edges in ``keys`` (from ``reverse_keys``) to their targets, in
    parallel over targets; a target that would overflow its row is pruned once with the
    heuristic over its old and new neighbours. Returns distance evaluations (int64)."""
    n = keys.shape[0]
    cap = links.shape[1]
    if n == 0:
        return 0
    n_groups = 1
    for i in range(1, n):
        if (keys[i] >> 32) != (keys[i - 1] >> 32):
            n_groups += 1
    starts = np.empty(n_groups + 1, np.int64)
    starts[0] = 0
    g = 1
    for i in range(1, n):
        if (keys[i] >> 32) != (keys[i - 1] >> 32):
            starts[g] = i
            g += 1
    starts[n_groups] = n
    evals = np.zeros(n_groups, np.int64)
    for g in prange(n_groups):
        a = starts[g]
        b = starts[g + 1]
        p = np.int32(keys[a] >> 32)
        row = p if level == 0 else up_offset[p] + level - 1
        deg = degs[row]
        # sources the target links to already (two new nodes of one batch that chose each
        # other) are dropped
        fresh = np.empty(b - a, np.int32)
        nf = 0
        for j in range(a, b):
            src = np.int32(keys[j] & 0xFFFFFFFF)
            dup = False
            for t in range(deg):
                if links[row, t] == src:
                    dup = True
                    break
            if not dup:
                fresh[nf] = src
                nf += 1
        if deg + nf <= cap:
            for j in range(nf):
                links[row, deg] = fresh[j]
                deg += 1
            degs[row] = deg
            continue
        total = deg + nf
        cand_n = np.empty(total, np.int32)
        cand_d = np.empty(total, np.float32)
        for j in range(deg):
            cand_n[j] = links[row, j]
        for j in range(nf):
            cand_n[deg + j] = fresh[j]
        for j in range(total):
            cand_d[j] = distance(vectors[p], vectors[cand_n[j]], metric)
        order = np.argsort(cand_d, kind="mergesort")
        cand_n = cand_n[order]
        cand_d = cand_d[order]
        out = np.empty(cap, np.int32)
        kept, e = select_neighbors(cand_n, cand_d, total, cap, vectors, metric, out)
        links[row, :kept] = out[:kept]
        degs[row] = kept
        evals[g] = total + e
    return evals.sum()


@njit(**KERNEL)
def mark_reachable(links0, deg0, reachable, start):
    """Set ``reachable`` (bool) for ``start`` and every node level 0 reaches from it that is not
    marked yet (breadth-first)."""
    queue = np.empty(reachable.shape[0], np.int32)
    queue[0] = start
    reachable[start] = True
    head = 0
    tail = 1
    while head < tail:
        u = queue[head]
        head += 1
        for j in range(deg0[u]):
            v = links0[u, j]
            if not reachable[v]:
                reachable[v] = True
                queue[tail] = v
                tail += 1


@njit(**KERNEL)
def unreachable_nodes(links0, deg0, entry, count):
    """Nodes < ``count`` that level 0 cannot reach from ``entry`` (breadth-first), int64."""
    seen = np.zeros(count, np.bool_)
    mark_reachable(links0, deg0, seen, entry)
    return np.flatnonzero(~seen)


@njit(**KERNEL)
def unlinked_nodes(links0, deg0, start, stop):
    """Nodes in ``start .. stop-1`` that none of their own level-0 neighbours links back to
    (after an insertion: the new nodes that pruning may have left without an in-link), int64."""
    out = np.empty(stop - start, np.int64)
    k = 0
    for u in range(start, stop):
        found = False
        for j in range(deg0[u]):
            v = links0[u, j]
            for t in range(deg0[v]):
                if links0[v, t] == u:
                    found = True
                    break
            if found:
                break
        if not found:
            out[k] = u
            k += 1
    return out[:k]
