"""Graph search: greedy descent on the upper levels, beam search on one level, batch search.

Graph layout (structure of arrays, see ``shoal.index``):

- ``links0`` int32 (capacity, 2*m), ``deg0`` int32 (capacity): level-0 neighbours of node i
  are ``links0[i, :deg0[i]]``;
- ``links_up`` int32 (pool, m), ``deg_up`` int32 (pool): the neighbours of node i on level
  l >= 1 are in row ``up_offset[i] + l - 1`` of the pool.

The beam is one sorted array of at most ``ef`` (distance, node, expanded) entries; a search
ends when every entry of the beam has been expanded. That is HNSW's algorithm 2 with the
candidate and result queues folded into one bounded list.
"""

import numpy as np
from numba import njit, prange

from shoal.kernels import KERNEL, KERNEL_PARALLEL
from shoal.kernels.distance import distance_row, distances_to_list
from shoal.kernels.prefetch import prefetch_row
from shoal.kernels.quantize import prepare_query


@njit(**KERNEL)
def next_tag(visited, tag):
    """The next visited-set generation after ``tag``; clears ``visited`` (uint16) when it wraps."""
    if tag == 65535:
        visited[:] = 0
        return 1
    return tag + 1


@njit(**KERNEL)
def beam_scratch(ef, width):
    """Per-worker scratch of a beam search: (beam_d, beam_n, beam_x) with room for ``ef``
    entries and (buf_n, buf_d) for one neighbour row of ``width`` links."""
    return (np.empty(ef, np.float32), np.empty(ef, np.int32), np.empty(ef, np.bool_),
            np.empty(width, np.int32), np.empty(width, np.float32))


@njit(**KERNEL)
def greedy_descend(query, vectors, links_up, deg_up, up_offset, entry, top_level, stop_level,
                   metric, count):
    """Walk greedily from ``entry`` on levels ``top_level`` .. ``stop_level + 1``, over nodes
    below ``count`` (links to later nodes, being inserted by a writer, are skipped).

    Returns (node, distance, distance evaluations).
    """
    cur = entry
    cur_d = distance_row(query, vectors, cur, metric)
    evals = 1
    for level in range(top_level, stop_level, -1):
        changed = True
        while changed:
            changed = False
            row = up_offset[cur] + level - 1
            for j in range(deg_up[row]):
                nb = links_up[row, j]
                if nb < 0 or nb >= count:
                    continue
                d = distance_row(query, vectors, nb, metric)
                evals += 1
                if d < cur_d:
                    cur_d = d
                    cur = nb
                    changed = True
    return cur, cur_d, evals


@njit(**KERNEL)
def beam_insert(beam_d, beam_n, beam_x, size, ef, d, node):
    """Insert (d, node) unexpanded into the sorted beam of ``size`` <= ``ef`` entries.

    Returns (new size, position), position -1 when ``d`` is not better than a full beam's worst.
    """
    if size == ef:
        if d >= beam_d[size - 1]:
            return size, -1
        pos = size - 1
    else:
        pos = size
        size += 1
    while pos > 0 and beam_d[pos - 1] > d:
        beam_d[pos] = beam_d[pos - 1]
        beam_n[pos] = beam_n[pos - 1]
        beam_x[pos] = beam_x[pos - 1]
        pos -= 1
    beam_d[pos] = d
    beam_n[pos] = node
    beam_x[pos] = False
    return size, pos


@njit(**KERNEL)
def search_layer(query, vectors, links, degs, up_offset, level, size, ef, metric, count,
                 visited, tag, beam_d, beam_n, beam_x, buf_n, buf_d):
    """Beam search for ``query`` on one level, continuing from the beam's first ``size`` entries
    (sorted, their nodes marked in ``visited`` with ``tag``; unexpanded ones get expanded).

    ``links``/``degs`` are level 0's arrays when ``level == 0``, else the upper-level pool.
    Only nodes below ``count`` are visited: a reader of a graph that a writer is growing skips
    links to nodes published after its snapshot (and any torn entry of a row being rewritten).
    ``beam_*`` have room for ``ef`` entries and ``buf_*`` for one neighbour row. On return
    ``beam_d[:size]`` is sorted ascending and every entry is expanded.
    Returns (size, distance evaluations).
    """
    evals = 0
    i = 0
    while i < size and beam_x[i]:
        i += 1
    while i < size:
        node = beam_n[i]
        beam_x[i] = True
        row = node if level == 0 else up_offset[node] + level - 1
        cnt = 0
        for j in range(degs[row]):
            nb = links[row, j]
            if nb >= 0 and nb < count and visited[nb] != tag:
                visited[nb] = tag
                buf_n[cnt] = nb
                cnt += 1
                prefetch_row(vectors, nb)
        distances_to_list(query, vectors, buf_n, cnt, metric, buf_d)
        evals += cnt
        lowest = i + 1
        for j in range(cnt):
            size, pos = beam_insert(beam_d, beam_n, beam_x, size, ef, buf_d[j], buf_n[j])
            if pos >= 0:
                if level == 0:  # it may be expanded next: fetch its links meanwhile
                    prefetch_row(links, buf_n[j])
                if pos < lowest:
                    lowest = pos
        i = lowest
        while i < size and beam_x[i]:
            i += 1
    return size, evals


@njit(**KERNEL)
def search_from(query, vectors, links, degs, up_offset, level, entry, entry_d, ef, metric, count,
                visited, tag, beam_d, beam_n, beam_x, buf_n, buf_d):
    """``search_layer`` from one entry node; returns (size, distance evaluations)."""
    beam_d[0] = entry_d
    beam_n[0] = entry
    beam_x[0] = False
    visited[entry] = tag
    return search_layer(query, vectors, links, degs, up_offset, level, 1, ef, metric, count,
                        visited, tag, beam_d, beam_n, beam_x, buf_n, buf_d)


@njit(**KERNEL)
def heap_push(heap_d, heap_n, size, d, node):
    """Push (d, node) on the binary min-heap ``heap_*[:size]``; returns the new size."""
    i = size
    while i > 0:
        parent = (i - 1) >> 1
        if heap_d[parent] <= d:
            break
        heap_d[i] = heap_d[parent]
        heap_n[i] = heap_n[parent]
        i = parent
    heap_d[i] = d
    heap_n[i] = node
    return size + 1


@njit(**KERNEL)
def heap_pop(heap_d, heap_n, size):
    """Pop the smallest entry of the min-heap; returns (d, node, new size)."""
    top_d = heap_d[0]
    top_n = heap_n[0]
    size -= 1
    last_d = heap_d[size]
    last_n = heap_n[size]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and heap_d[child + 1] < heap_d[child]:
            child += 1
        if heap_d[child] >= last_d:
            break
        heap_d[i] = heap_d[child]
        heap_n[i] = heap_n[child]
        i = child
    heap_d[i] = last_d
    heap_n[i] = last_n
    return top_d, top_n, size


@njit(**KERNEL)
def search_layer_filtered(query, vectors, links0, deg0, entry, entry_d, ef, metric, count,
                          allowed, visited, tag, heap_d, heap_n, beam_d, beam_n, beam_x):
    """Level-0 search whose results are only nodes with ``allowed[node]`` (uint8) set, while
    every node still serves to navigate (hnswlib's filtered search). Candidates live in a
    min-heap (``heap_*``, room for every node); results in the sorted beam (room for ``ef``).
    Stops when the nearest candidate is farther than the worst of ``ef`` results.
    Returns (results, distance evaluations).
    """
    visited[entry] = tag
    size = heap_push(heap_d, heap_n, 0, entry_d, entry)
    found = 0
    if allowed[entry]:
        found, _ = beam_insert(beam_d, beam_n, beam_x, found, ef, entry_d, entry)
    evals = 0
    while size > 0:
        d, node, size = heap_pop(heap_d, heap_n, size)
        if found == ef and d > beam_d[found - 1]:
            break
        for j in range(deg0[node]):
            nb = links0[node, j]
            if nb < 0 or nb >= count or visited[nb] == tag:
                continue
            visited[nb] = tag
            dn = distance_row(query, vectors, nb, metric)
            evals += 1
            if found < ef or dn < beam_d[found - 1]:
                size = heap_push(heap_d, heap_n, size, dn, nb)
                if allowed[nb]:
                    found, _ = beam_insert(beam_d, beam_n, beam_x, found, ef, dn, nb)
    return found, evals


@njit(**KERNEL)
def search_one(query, rows, links0, deg0, links_up, deg_up, up_offset, entry, top_level, count,
               metric, ef, allowed, visited, tag, heap_d, heap_n, beam_d, beam_n, beam_x, buf_n,
               buf_d):
    """One query's search over ``rows`` (float32 rows, or codes with a prepared query): greedy
    descent, then the level-0 beam (``allowed``, when not empty, restricts the results).
    Leaves the beam sorted in ``beam_*``; returns (size, distance evaluations)."""
    cur, cur_d, evals = greedy_descend(query, rows, links_up, deg_up, up_offset, entry, top_level,
                                       0, metric, count)
    if allowed.shape[0] > 0:
        size, e2 = search_layer_filtered(query, rows, links0, deg0, cur, cur_d, ef, metric, count,
                                         allowed, visited, tag, heap_d, heap_n, beam_d, beam_n,
                                         beam_x)
        return size, evals + e2
    size, e2 = search_from(query, rows, links0, deg0, up_offset, 0, cur, cur_d, ef, metric, count,
                           visited, tag, beam_d, beam_n, beam_x, buf_n, buf_d)
    evals += e2
    if size < ef and size < count and visited[entry] != tag:
        # The component of the descent's end is smaller than the beam: go on from the entry
        # point, which reaches every node (a small index still answers exactly).
        visited[entry] = tag
        size, _ = beam_insert(beam_d, beam_n, beam_x, size, ef,
                              distance_row(query, rows, entry, metric), entry)
        size, e3 = search_layer(query, rows, links0, deg0, up_offset, 0, size, ef, metric, count,
                                visited, tag, beam_d, beam_n, beam_x, buf_n, buf_d)
        evals += e3 + 1
    return size, evals


@njit(**KERNEL)
def rerank(query, vectors, beam_d, beam_n, size, metric):
    """Replace the beam's distances by exact ones from the float32 ``vectors`` and sort it
    again (insertion sort: the beam is nearly in order already)."""
    for j in range(size):
        prefetch_row(vectors, beam_n[j])
    distances_to_list(query, vectors, beam_n, size, metric, beam_d)
    for j in range(1, size):
        d = beam_d[j]
        n = beam_n[j]
        i = j
        while i > 0 and beam_d[i - 1] > d:
            beam_d[i] = beam_d[i - 1]
            beam_n[i] = beam_n[i - 1]
            i -= 1
        beam_d[i] = d
        beam_n[i] = n


@njit(**KERNEL)
def search_chunk(c, lo, hi, queries, k, ef, vectors, codes, code_lo, code_step, links0, deg0,
                 links_up, deg_up, up_offset, entry, top_level, count, metric, visited, tags,
                 allowed, skip, out_n, out_d, evals):
    """Queries ``lo .. hi-1`` of a batch, with worker ``c``'s scratch (see ``search_batch``);
    writes their rows of ``out_n``, ``out_d`` and ``evals``."""
    beam_d, beam_n, beam_x, buf_n, buf_d = beam_scratch(ef, links0.shape[1])
    heap_size = count if allowed.shape[0] > 0 else 0
    heap_d = np.empty(heap_size, np.float32)
    heap_n = np.empty(heap_size, np.int32)
    prepared = np.empty(queries.shape[1], np.float32)
    coded = codes.shape[0] > 0
    tag = tags[c]
    for q in range(lo, hi):
        tag = next_tag(visited[c], tag)
        if skip.shape[0] > 0 and skip[q] >= 0:
            visited[c][skip[q]] = tag
        if coded:
            prepare_query(queries[q], code_lo, code_step, metric, prepared)
            size, e = search_one(prepared, codes, links0, deg0, links_up, deg_up, up_offset,
                                 entry, top_level, count, metric, ef, allowed, visited[c], tag,
                                 heap_d, heap_n, beam_d, beam_n, beam_x, buf_n, buf_d)
            rerank(queries[q], vectors, beam_d, beam_n, size, metric)
            e += size
        else:
            size, e = search_one(queries[q], vectors, links0, deg0, links_up, deg_up, up_offset,
                                 entry, top_level, count, metric, ef, allowed, visited[c], tag,
                                 heap_d, heap_n, beam_d, beam_n, beam_x, buf_n, buf_d)
        evals[q] = e
        for j in range(min(k, size)):
            out_n[q, j] = beam_n[j]
            out_d[q, j] = beam_d[j]
    tags[c] = tag


@njit(**KERNEL_PARALLEL)
def search_batch(queries, k, ef, vectors, codes, code_lo, code_step, links0, deg0, links_up,
                  deg_up, up_offset, entry, top_level, count, metric, visited, tags,
                 allowed, skip):
    """k nearest nodes of each query row among ``count`` nodes, in parallel over queries.

    ``codes`` uint8 (capacity, dim) with ``code_lo``/``code_step`` (``shoal.kernels.quantize``):
    the walk compares the query with codes and the whole beam it ends with is ranked again by
    the float32 ``vectors`` (ranking only the best 2k lost nothing on both real datasets but a
    quarter of recall on data with a tight cluster in a wide range, where codes tie); an empty
    ``codes`` array walks the float32 rows.
    ``allowed`` uint8 (capacity,) restricts the results to nodes where it is set (a filter);
    an empty array means every node.
    ``skip`` int32 (nq,): a level-0 node that query ``q``'s walk treats as absent (-1: none), as
    if the query were a row held out of the index (calibration); an empty array skips none.

    ``visited`` uint16 (chunks, capacity) and ``tags`` uint16 (chunks,) are per-worker scratch;
    queries are split into ``chunks`` contiguous ranges, one worker each.
    Returns nodes int32 (nq, k) padded with -1, distances float32 (nq, k) padded with +inf,
    and distance evaluations int64 (nq,).
    """
    nq = queries.shape[0]
    out_n = np.full((nq, k), -1, np.int32)
    out_d = np.full((nq, k), np.inf, np.float32)
    evals = np.zeros(nq, np.int64)
    chunks = visited.shape[0]
    for c in prange(chunks):
        search_chunk(c, c * nq // chunks, (c + 1) * nq // chunks, queries, k, ef, vectors, codes,
                     code_lo, code_step, links0, deg0, links_up, deg_up, up_offset, entry,
                     top_level, count, metric, visited, tags, allowed, skip, out_n, out_d, evals)
    return out_n, out_d, evals


@njit(**KERNEL)
def search_serial(queries, k, ef, vectors, codes, code_lo, code_step, links0, deg0, links_up,
                   deg_up, up_offset, entry, top_level, count, metric, visited, tags,
                  allowed, skip):
    """``search_batch`` on the calling thread with scratch row 0: a single query (or a batch
    on one thread) pays no parallel launch, which costs more than the search itself."""
    nq = queries.shape[0]
    out_n = np.full((nq, k), -1, np.int32)
    out_d = np.full((nq, k), np.inf, np.float32)
    evals = np.zeros(nq, np.int64)
    search_chunk(0, 0, nq, queries, k, ef, vectors, codes, code_lo, code_step, links0,
                 deg0, links_up, deg_up, up_offset, entry, top_level, count, metric, visited, tags,
                 allowed, skip, out_n, out_d, evals)
    return out_n, out_d, evals


@njit(**KERNEL)
def labels_of(nodes, ids):
    """int64 ids of ``nodes`` (int32 (nq, k)), -1 where a node is -1 (padding)."""
    out = np.full(nodes.shape, -1, np.int64)
    for i in range(nodes.shape[0]):
        for j in range(nodes.shape[1]):
            if nodes[i, j] >= 0:
                out[i, j] = ids[nodes[i, j]]
    return out
