"""Speculative retrieval: how often retrieval is ready before the turn ends, and what it saves.

Run from the repository root::

    python -m benchmarks.speculative            # 30 turns per variant
    python -m benchmarks.speculative --quick    # 5 turns, speculation on only (< 60 s)

Same conversation and turns as ``benchmarks.turn_latency`` (q1-q4, hello, cycled) but
with ``BACKTALK_EMBEDDER=openai`` against FakeOpenAI: the lecture is ingested through
the fake with no delay, then every embeddings request takes ``--embedding-delay``
(0.2 s, OpenAI's published median). Variants:

* ``speculation on`` (as shipped): ``SpeculativeRetrievalTap`` prefetches on interim and
  final transcriptions; the RAG processor reuses a prefetch whose normalised query
  equals the turn's final user text;
* ``speculation off``: ``BACKTALK_SPECULATIVE_RETRIEVAL=false``;
* ``prefix reuse (prototype)``: a proposed change to ``SpeculativeRetriever.retrieve``
  (see :class:`PrefixReuse`), swapped onto the running conversation's retriever.

Per turn: the RAG processor's ``ProcessingMetricsData`` (the time the turn waited for
retrieval: the critical-path cost), the retriever's ``SpeculativeStats`` deltas
(``hits``, ``ready_hits``, ``misses``), every prefetched query and the final query.
Goal: ≥ 90 % of turns add ≤ 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from benchmarks._common import log, machine_info, machine_markdown, md_table, pyplot, write_results
from benchmarks._voice import (
    TURN_FIXTURES,
    VoiceSession,
    add_pg_info,
    add_service_args,
    close_resources,
    fixture_stimulus,
    ms,
    open_resources,
    pct,
    service_delays,
    settings,
    voice_world,
)

GOAL_SHARE = 0.90
GOAL_ADDED_S = 0.005


def _prefix_reuse_class():
    from backtalk.processors.speculative import SpeculativeRetriever, normalize_query

    class PrefixReuse(SpeculativeRetriever):
        """Prototype: also reuse a prefetch of a *prefix* of the final query.

        When no prefetch has the final query's exact normalised text, reuse the most
        recent prefetch whose text is a word prefix of it and covers at least
        ``min_cover`` of its words, provided it has finished (so the turn waits for
        nothing). The final query is still retrieved in the background, to measure
        how often the reused chunks differ from it (``quality`` below).
        """

        min_cover = 0.5
        quality: list[dict] = []

        def _best_prefix(self, final: str, k: int):
            words = final.split()
            best = None
            for (query, kk), task in self._pending.items():
                if kk != k or not task.done() or task.cancelled() or task.exception():
                    continue
                qw = query.split()
                if qw and len(qw) < len(words) and words[: len(qw)] == qw:
                    if len(qw) / len(words) >= self.min_cover and (
                        best is None or len(qw) > best[0]
                    ):
                        best = (len(qw), query, task)
            return best

        async def retrieve(self, query, *, k):
            key = (normalize_query(query), k)
            task = self._pending.get(key)
            if task is not None and not task.cancelled() and task.done():
                return await super().retrieve(query, k=k)
            best = self._best_prefix(key[0], k)
            if best is None:
                return await super().retrieve(query, k=k)
            self.stats.hits += 1
            self.stats.ready_hits += 1
            reused = best[2].result()
            fresh = asyncio.get_running_loop().create_task(self._retriever.retrieve(query, k=k))

            def compare(t, reused=reused, prefix=best[1], final=key[0]):
                if t.cancelled() or t.exception():
                    return
                a = [
                    c.chunk_id if hasattr(c, "chunk_id") else (c.video_key, c.start_s)
                    for c in reused
                ]
                b = [
                    c.chunk_id if hasattr(c, "chunk_id") else (c.video_key, c.start_s)
                    for c in t.result()
                ]
                self.quality.append(
                    {
                        "prefix": prefix,
                        "final": final,
                        "top1_same": bool(a and b and a[0] == b[0]),
                        "overlap": len(set(a) & set(b)) / max(1, len(b)),
                    }
                )

            fresh.add_done_callback(compare)
            return reused

    return PrefixReuse


class SpecTrace:
    """Records prefetches and lookups of the conversation's SpeculativeRetriever."""

    def __init__(self, spec):
        from backtalk.processors.speculative import normalize_query

        self.spec = spec
        self.prefetched: list[tuple[float, str]] = []
        self.lookups: list[dict] = []
        prefetch, retrieve = spec.prefetch, spec.retrieve

        def traced_prefetch(query, *, k):
            self.prefetched.append((time.monotonic(), normalize_query(query)))
            return prefetch(query, k=k)

        async def traced_retrieve(query, *, k):
            key = (normalize_query(query), k)
            task = spec._pending.get(key)
            self.lookups.append(
                {
                    "t": time.monotonic(),
                    "query": key[0],
                    "found": task is not None,
                    "ready": bool(task is not None and task.done()),
                }
            )
            return await retrieve(query, k=k)

        spec.prefetch, spec.retrieve = traced_prefetch, traced_retrieve


async def run_variant(
    world, label: str, env: dict[str, str], n_turns: int, prototype: bool = False
) -> dict:
    s = settings(**env)
    embeddings_before = (await world.fakes.actl("stats", last=0))["embedding_requests"]
    resources = await open_resources(s)
    stimuli = [fixture_stimulus(f) for f in TURN_FIXTURES]
    turns: list[dict] = []
    quality: list[dict] = []
    try:
        async with VoiceSession(resources, world.fakes, name=label) as session:
            stages = dict(session.conversation.stages.stages)
            spec = stages["speculation"]._retriever if "speculation" in stages else None
            trace = None
            if spec is not None:
                if prototype:
                    cls = _prefix_reuse_class()
                    cls.quality = quality
                    spec.__class__ = cls
                trace = SpecTrace(spec)
            await session.wait_greeting()
            for i in range(n_turns):
                stim = stimuli[i % len(stimuli)]
                before = vars(spec.stats).copy() if spec else {}
                n_pref = len(trace.prefetched) if trace else 0
                n_look = len(trace.lookups) if trace else 0
                rec = await session.turn(stim, timeout=15.0)
                after = vars(spec.stats).copy() if spec else {}
                delta = {k: after[k] - before.get(k, 0) for k in after}
                lookup = trace.lookups[n_look:] if trace else []
                row: dict[str, Any] = {
                    "name": stim.name,
                    "text": stim.text,
                    "rag_s": rec.rag_s,
                    "released": rec.released,
                    "stats_delta": delta,
                    "prefetched": [q for _, q in trace.prefetched[n_pref:]] if trace else [],
                    "final_query": lookup[-1]["query"] if lookup else None,
                    "found": lookup[-1]["found"] if lookup else None,
                    "ready": lookup[-1]["ready"] if lookup else None,
                    "overhead": rec.overhead_s(
                        world.fakes.config["llm_ttft_s"], world.fakes.config["tts_first_audio_s"]
                    ),
                    "v2v": rec.breakdown["total_secs"] if rec.breakdown else None,
                }
                if trace and row["final_query"] is not None:
                    times = [t for t, q in trace.prefetched[n_pref:] if q == row["final_query"]]
                    row["final_prefetch_lead_s"] = (lookup[-1]["t"] - times[0]) if times else None
                turns.append(row)
                log(
                    f"{label:26} {stim.name:26} rag {ms(rec.rag_s, 1):>6} ms  "
                    f"{'ready-hit' if delta.get('ready_hits') else 'hit' if delta.get('hits') else 'miss' if delta.get('misses') else '-'}"  # noqa: E501
                    f"  lead {ms(row.get('final_prefetch_lead_s'), 0)} ms"
                )
            stats = vars(spec.stats).copy() if spec else None
            fakes = await world.fakes.actl("stats", last=1)
    finally:
        await close_resources(resources)
    rag = [t["rag_s"] for t in turns if t["rag_s"] is not None]
    within = [r for r in rag if r <= GOAL_ADDED_S]
    return {
        "label": label,
        "env": env,
        "prototype": prototype,
        "turns": turns,
        "stats": stats,
        "embedding_requests": fakes["embedding_requests"] - embeddings_before,
        "rag_p50": pct(rag, 50),
        "rag_p95": pct(rag, 95),
        "share_within_5ms": len(within) / len(rag) if rag else None,
        "ready_hit_share": (
            sum(1 for t in turns if t["stats_delta"].get("ready_hits")) / len(turns)
        )
        if turns
        else None,
        "exact_match_share": (sum(1 for t in turns if t["found"]) / len(turns)) if turns else None,
        "v2v_p50": pct([t["v2v"] for t in turns if t["v2v"]], 50),
        "quality": quality,
        "goal_pass": bool(rag) and len(within) / len(rag) >= GOAL_SHARE,
    }


def markdown(variants, info, delays) -> str:
    lines = [
        "# Speculative retrieval",
        "",
        machine_markdown(info),
        "",
        "`BACKTALK_EMBEDDER=openai` against FakeOpenAI (embeddings "
        f"{delays['embedding_delay_s']}s per request; the lecture ingested with no delay). "
        "Added latency = the RAG processor's `ProcessingMetricsData` per turn (the time the "
        "turn waited for retrieval). LoopbackTransport in-process.",
        "",
    ]
    rows = []
    for v in variants:
        st = v["stats"] or {}
        rows.append(
            [
                v["label"],
                len(v["turns"]),
                ms(v["rag_p50"], 1),
                ms(v["rag_p95"], 1),
                "–" if v["share_within_5ms"] is None else f"{100 * v['share_within_5ms']:.0f}%",
                "–"
                if not st
                else f"{st.get('ready_hits', 0)}/{st.get('hits', 0)}/{st.get('misses', 0)}",
                "–"
                if v["exact_match_share"] is None or not st
                else f"{100 * v['exact_match_share']:.0f}%",
                v["embedding_requests"],
                ms(v["v2v_p50"], 0),
                "PASS" if v["goal_pass"] else "FAIL",
            ]
        )
    lines.append(
        md_table(
            [
                "variant",
                "turns",
                "added p50 ms",
                "added p95 ms",
                "turns adding ≤5 ms",
                "ready hits/hits/misses",
                "final query prefetched",
                "embedding requests",
                "v2v p50 ms",
                "goal ≥90% ≤5 ms",
            ],
            rows,
        )
    )
    on = next((v for v in variants if v["label"] == "speculation on"), None)
    if on:
        lines += [
            "",
            "## Per turn (speculation on)",
            "",
            md_table(
                [
                    "fixture",
                    "added ms",
                    "outcome",
                    "final prefetched ms before lookup",
                    "last interim prefetch",
                    "final query",
                ],
                [
                    [
                        t["name"],
                        ms(t["rag_s"], 1),
                        "ready hit"
                        if t["stats_delta"].get("ready_hits")
                        else "hit (waited)"
                        if t["stats_delta"].get("hits")
                        else "miss",
                        ms(t.get("final_prefetch_lead_s"), 0),
                        next((q for q in reversed(t["prefetched"]) if q != t["final_query"]), "–"),
                        t["final_query"],
                    ]
                    for t in on["turns"][:10]
                ],
            ),
        ]
    proto = next((v for v in variants if v["prototype"]), None)
    if proto and proto["quality"]:
        q = proto["quality"]
        lines += [
            "",
            f"Prefix reuse: the reused chunks vs a fresh retrieval of the final query: "
            f"top-1 chunk identical in {sum(x['top1_same'] for x in q)}/{len(q)} reuses, "
            f"mean top-{len(q) and 4} overlap {100 * sum(x['overlap'] for x in q) / len(q):.0f}%.",
        ]
    return "\n".join(lines)


def plot(variants):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for v in variants:
        rag = sorted(t["rag_s"] * 1000 for t in v["turns"] if t["rag_s"] is not None)
        if rag:
            ax.step(
                rag, [(i + 1) / len(rag) for i in range(len(rag))], where="post", label=v["label"]
            )
    ax.axvline(GOAL_ADDED_S * 1000, color="r", ls="--", lw=1, label="5 ms")
    ax.axhline(GOAL_SHARE, color="g", ls=":", lw=1, label="90 % of turns")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("retrieval time on the critical path (RAG processing metric), ms")
    ax.set_ylabel("share of turns ≤ x")
    ax.legend(fontsize=8)
    ax.set_title("Speculative retrieval (OpenAI embeddings, 0.2 s)")
    fig.tight_layout()
    return fig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--turns", type=int, default=30)
    p.add_argument("--no-prototype", action="store_true", help="skip the prefix-reuse variant")
    add_service_args(p)
    args = p.parse_args()
    delays = service_delays(args)
    n = 5 if args.quick else args.turns
    variants_spec = [("speculation on", {}, False)]
    if not args.quick:
        variants_spec.append(
            ("speculation off", {"BACKTALK_SPECULATIVE_RETRIEVAL": "false"}, False)
        )
        if not args.no_prototype:
            variants_spec.append(("prefix reuse (prototype)", {}, True))
    t0 = time.perf_counter()
    info = machine_info()
    variants = []
    with voice_world(delays, embedder="openai") as world:
        add_pg_info(info, world)
        for label, env, proto in variants_spec:
            variants.append(asyncio.run(run_variant(world, label, env, n, proto)))
    payload = {
        "benchmark": "speculative",
        "machine": info,
        "delays": delays,
        "wall_s": round(time.perf_counter() - t0, 1),
        "variants": variants,
    }
    name = "speculative_quick" if args.quick else "speculative"
    write_results(name, payload, markdown(variants, info, delays), plot(variants))


if __name__ == "__main__":
    main()
