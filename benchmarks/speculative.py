"""Speculative retrieval: how often retrieval is ready before the turn ends, and what it saves.

Run from the repository root::

    python -m benchmarks.speculative            # 30 turns per variant
    python -m benchmarks.speculative --quick    # 5 turns, speculation on and Flux (~90 s)

Same conversation and turns as ``benchmarks.turn_latency`` (q1-q4, hello, cycled) but
with ``BACKTALK_EMBEDDER=openai`` against FakeOpenAI: the lecture is ingested through
the fake with no delay, then every embeddings request takes ``--embedding-delay``
(0.2 s, OpenAI's published median). Variants:

* ``speculation on`` (as shipped): ``SpeculativeRetrievalTap`` prefetches on interim and
  final transcriptions; the RAG processor reuses a prefetch whose normalised query
  equals the turn's final user text;
* ``speculation off``: ``BACKTALK_SPECULATIVE_RETRIEVAL=false``;
* ``prefix reuse (prototype)``: a proposed change to ``SpeculativeRetriever.retrieve``
  (see :class:`PrefixReuse`), swapped onto the running conversation's retriever;
* ``Flux, eager end of turn``: ``BACKTALK_STT_SERVICE=deepgram_flux`` with speculation
  on (``BACKTALK_SPECULATIVE_RETRIEVAL=true``; off by default with Flux, see below). The
  fake Flux recogniser sends ``EagerEndOfTurn`` ``--flux-eager-eot-delay`` (0.25 s) and
  ``EndOfTurn`` ``--flux-eot-delay`` (0.45 s) after the end of speech; Pipecat's
  ``EagerUserTurnStrategies`` run the turn (retrieval, then the LLM request) on the
  eager one and the LLM service holds the answer until ``EndOfTurn`` releases the turn
  (``UserStoppedSpeakingFrame``).
* ``Flux, speculation off``: the same with ``BACKTALK_SPECULATIVE_RETRIEVAL=false`` (the
  eager end of turn already retrieves early: what do the tap's prefetches add? Nothing
  but embedding requests, so this is Flux's default).

Per turn: the RAG processor's ``ProcessingMetricsData`` (the time the turn waited for
retrieval), the retriever's ``SpeculativeStats`` deltas (``hits``, ``ready_hits``,
``misses``), every prefetched query and the final query.

Added latency (what the goal counts) = how much later the answer's first LLM token
was available to the user than with an instant retrieval::

    added = max(release, token) - max(release, token - retrieval)

``release`` = the turn's ``UserStoppedSpeakingFrame``; ``token`` = the answering
inference's first token out of the LLM (before the speculation gate); ``retrieval`` =
that inference's RAG ``ProcessingMetricsData``. With Nova the inference starts after
the release, so ``added`` = ``retrieval`` (the metric itself). With Flux
the inference may start on ``EagerEndOfTurn``, before the release: retrieval is hidden
only as far as the first token would anyway have come before the release; a retrieval
that ends before ``EndOfTurn`` still delays a token due after it one for one. The
narrower "the LLM request still waited for retrieval after the release"
(``max(0, retrieval end - release)``) is reported alongside.
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


def added_latency(release: float, token: float, retrieval: float) -> float:
    """How much later the first token was available to the user (see the docstring)."""
    return max(release, token) - max(release, token - retrieval)


def turn_timing(session, rec) -> dict[str, Any]:
    """The answering inference's critical path, from the session's probe and hooks.

    All times in seconds relative to the turn's release (``UserStoppedSpeakingFrame``).
    The answering inference is the last one whose context left the RAG processor
    before the first LLM text the user could hear (the first ``LLMTextFrame`` past the
    LLM service's speculation gate after the release): a withdrawn speculation never
    gets past the gate, and its retrieval, if cancelled, never leaves the processor.
    """
    start, end = rec.extra.get("speech_start_mono"), rec.extra.get("speech_end_mono")
    if rec.released is None or start is None:
        return {}
    release = end + rec.released
    events = [e for e in session.probe.events if e[0] >= start - 0.05]
    hooks = [h for h in session.hooks if h[0] >= start - 0.05]
    heard = next((t for t, n, _ in events if n == "FirstLLMText" and t >= release - 0.001), None)
    eagers = [t for t, n, _ in events if n == "EagerTranscriptionFrame" and t <= release]
    withdrawn = [t for t, n, _ in events if n == "EagerEndOfTurnCancelFrame" and t <= release]
    out: dict[str, Any] = {
        "eager_events": len(eagers),
        "withdrawn": len(withdrawn),
        "last_eager": (eagers[-1] - release) if eagers else None,
        # Every RAG ProcessingMetricsData of the turn (speculative, cancelled, final).
        "rag_metrics": [
            (round(t - release, 4), round(d["s"], 4))
            for t, n, d in events
            if n == "RAGProcessing" and t <= (heard or release + 5)
        ],
    }
    if heard is None:
        return out
    outs = [t for t, n, _ in hooks if n == "rag.out" and t <= heard]
    if not outs:
        return out
    rag_out = outs[-1]
    rag_in = max((t for t, n, _ in hooks if n == "rag.in" and t <= rag_out), default=None)
    token = next((t for t, n, _ in hooks if n == "llm.text" and t >= rag_out), None)
    create = next((t for t, n, _ in hooks if n == "llm.create" and t >= rag_out), None)
    if rag_in is None or token is None:
        return out
    metric = next(
        (d["s"] for t, n, d in events if n == "RAGProcessing" and rag_in <= t <= rag_out + 0.05),
        None,
    )
    retrieval = metric if metric is not None else rag_out - rag_in
    out.update(
        speculative=rag_in < release,  # the answer was asked for before the release
        rag_in=rag_in - release,
        rag_out=rag_out - release,
        llm_create=None if create is None else create - release,
        token=token - release,
        heard=heard - release,
        retrieval=retrieval,
        retrieval_from_metric=metric is not None,
        request_wait=max(0.0, rag_out - release),
        added=added_latency(release, token, retrieval),
    )
    return out


async def run_variant(
    world,
    label: str,
    env: dict[str, str],
    n_turns: int,
    prototype: bool = False,
    flux: bool = False,
) -> dict:
    s = settings(**env)
    fakes_before = await world.fakes.actl("stats", last=0)
    embeddings_before = fakes_before["embedding_requests"]
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
                timing = turn_timing(session, rec)
                after = vars(spec.stats).copy() if spec else {}
                delta = {k: after[k] - before.get(k, 0) for k in after}
                lookup = trace.lookups[n_look:] if trace else []
                # Nova: the RAG metric after the release (the inference starts there).
                # Flux: the answering inference's metric, wherever it started.
                rag_s = timing.get("retrieval") if flux else rec.rag_s
                row: dict[str, Any] = {
                    "name": stim.name,
                    "text": stim.text,
                    "rag_s": rag_s,
                    "added_s": timing.get("added") if flux else rec.rag_s,
                    "rag_s_after_release": rec.rag_s,
                    "timing": timing,
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
                    f"{label:26} {stim.name:26} rag {ms(rag_s, 1):>6} ms  "
                    f"added {ms(row['added_s'], 1):>6} ms  "
                    f"{'ready-hit' if delta.get('ready_hits') else 'hit' if delta.get('hits') else 'miss' if delta.get('misses') else '-'}"  # noqa: E501
                    f"  lead {ms(row.get('final_prefetch_lead_s'), 0)} ms"
                    + (
                        f"  eager {ms(timing.get('last_eager'), 0)} ms, token "
                        f"{ms(timing.get('token'), 0)} ms, withdrawn {timing.get('withdrawn')}"
                        if flux
                        else ""
                    )
                )
            stats = vars(spec.stats).copy() if spec else None
            fakes = await world.fakes.actl("stats", last=1)
    finally:
        await close_resources(resources)
    added = [t["added_s"] for t in turns if t["added_s"] is not None]
    within = [r for r in added if r <= GOAL_ADDED_S]
    out = {
        "label": label,
        "env": env,
        "prototype": prototype,
        "flux": flux,
        "turns": turns,
        "stats": stats,
        "embedding_requests": fakes["embedding_requests"] - embeddings_before,
        "added_p50": pct(added, 50),
        "added_p95": pct(added, 95),
        "rag_p50": pct([t["rag_s"] for t in turns], 50),
        "rag_p95": pct([t["rag_s"] for t in turns], 95),
        "share_within_5ms": len(within) / len(added) if added else None,
        "ready_hit_share": (
            sum(1 for t in turns if t["stats_delta"].get("ready_hits")) / len(turns)
        )
        if turns
        else None,
        "exact_match_share": (sum(1 for t in turns if t["found"]) / len(turns)) if turns else None,
        "v2v_p50": pct([t["v2v"] for t in turns if t["v2v"]], 50),
        "quality": quality,
        "goal_pass": bool(added) and len(within) / len(added) >= GOAL_SHARE,
    }
    if flux:
        tim = [t["timing"] for t in turns if t["timing"].get("added") is not None]
        waits = [x["request_wait"] for x in tim]
        before = fakes_before.get("flux_events", {})
        out["flux_summary"] = {
            "fake_flux_events": {
                e: n - before.get(e, 0) for e, n in fakes.get("flux_events", {}).items()
            },
            "unscripted_utterances": fakes["unscripted_utterances"]
            - fakes_before["unscripted_utterances"],
            "eager_events": sum(t["timing"].get("eager_events", 0) for t in turns),
            "withdrawn": sum(t["timing"].get("withdrawn", 0) for t in turns),
            "turns_with_withdrawn": sum(1 for t in turns if t["timing"].get("withdrawn")),
            "answered_speculatively": sum(1 for x in tim if x["speculative"]),
            "timed_turns": len(tim),
            "request_wait_p50": pct(waits, 50),
            "request_wait_p95": pct(waits, 95),
            "request_wait_share_within_5ms": (
                sum(1 for w in waits if w <= GOAL_ADDED_S) / len(waits) if waits else None
            ),
            "token_after_release_p50": pct([x["token"] for x in tim], 50),
            "eager_before_release_p50": pct(
                [-x["last_eager"] for x in tim if x.get("last_eager") is not None], 50
            ),
            "rag_in_before_release_p50": pct([-x["rag_in"] for x in tim], 50),
            "rag_out_after_release_p50": pct([x["rag_out"] for x in tim], 50),
        }
    return out


def _outcome(t: dict) -> str:
    d = t["stats_delta"]
    for key, outcome in (("ready_hits", "ready hit"), ("hits", "hit (waited)"), ("misses", "miss")):
        if d.get(key):
            return outcome
    return "–"


def markdown(variants, info, delays) -> str:
    lines = [
        "# Speculative retrieval",
        "",
        machine_markdown(info),
        "",
        "`BACKTALK_EMBEDDER=openai` against FakeOpenAI (embeddings "
        f"{delays['embedding_delay_s']}s per request; the lecture ingested with no delay); "
        f"LLM TTFT {delays['llm_ttft_s']}s, TTS first audio {delays['tts_first_audio_s']}s, "
        f"Nova final {delays['stt_final_delay_s']}s after Finalize, Flux EagerEndOfTurn / "
        f"EndOfTurn {delays.get('flux_eager_eot_delay_s', '–')}s / "
        f"{delays.get('flux_eot_delay_s', '–')}s after the end of speech. "
        "LoopbackTransport in-process.",
        "",
        "**Added latency** = how much later the answer's first LLM token was available to "
        "the user than with an instant retrieval: `max(release, token) − max(release, "
        "token − retrieval)`, where release = the turn's `UserStoppedSpeakingFrame`, token = "
        "the answering inference's first token out of the LLM (before the speculation gate) "
        "and retrieval = that inference's RAG `ProcessingMetricsData`. With Nova the inference "
        "starts after the release, so this is the RAG metric itself (the time the turn waited "
        "for retrieval). With Flux the inference starts on `EagerEndOfTurn`, before the "
        "release: a retrieval is hidden only as far as the token would have come before the "
        "release anyway.",
        "",
    ]
    rows = []
    for v in variants:
        st = v["stats"] or {}
        rows.append(
            [
                v["label"],
                len(v["turns"]),
                ms(v["added_p50"], 1),
                ms(v["added_p95"], 1),
                "–" if v["share_within_5ms"] is None else f"{100 * v['share_within_5ms']:.0f}%",
                ms(v["rag_p50"], 1),
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
                "RAG metric p50 ms",
                "ready hits/hits/misses",
                "answering query prefetched",
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
                        ms(t["added_s"], 1),
                        _outcome(t),
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
    for v in (v for v in variants if v.get("flux")):
        f = v["flux_summary"]
        ev = f["fake_flux_events"]
        share = f["request_wait_share_within_5ms"]
        lines += [
            "",
            f"## {v['label']}",
            "",
            "Retrieval on the eager turn, measured against the turn's release "
            "(`EndOfTurn` → `UserStoppedSpeakingFrame`); medians over the turns answered, "
            "ms relative to the release (negative: before it):",
            "",
            md_table(
                ["measure", "value"],
                [
                    ["turns answered / timed", f"{f['timed_turns']} / {len(v['turns'])}"],
                    [
                        "answered by the speculative (eager) inference",
                        f"{f['answered_speculatively']}/{f['timed_turns']}",
                    ],
                    [
                        "EagerEndOfTurn (EagerTranscriptionFrame) before the release, p50",
                        ms(f["eager_before_release_p50"], 0),
                    ],
                    [
                        "retrieval started (context into RAG) before the release, p50",
                        ms(f["rag_in_before_release_p50"], 0),
                    ],
                    ["RAG ProcessingMetricsData p50 (the whole retrieval)", ms(v["rag_p50"], 1)],
                    [
                        "retrieval done (context out of RAG) after the release, p50",
                        ms(f["rag_out_after_release_p50"], 1),
                    ],
                    [
                        "LLM request still waiting for retrieval after the release "
                        "(`max(0, done − release)`) p50 / p95 / share ≤ 5 ms",
                        f"{ms(f['request_wait_p50'], 1)} / {ms(f['request_wait_p95'], 1)} / "
                        + ("–" if share is None else f"{100 * share:.0f}%"),
                    ],
                    ["first LLM token after the release, p50", ms(f["token_after_release_p50"], 0)],
                    [
                        "**added** (first token delayed past the release by retrieval) "
                        "p50 / p95 / share ≤ 5 ms",
                        f"{ms(v['added_p50'], 1)} / {ms(v['added_p95'], 1)} / "
                        + (
                            "–"
                            if v["share_within_5ms"] is None
                            else f"{100 * v['share_within_5ms']:.0f}%"
                        ),
                    ],
                    [
                        "eager ends of turn / withdrawn (TurnResumed → EagerEndOfTurnCancelFrame)",
                        f"{f['eager_events']} / {f['withdrawn']} (in {f['turns_with_withdrawn']} "
                        f"turns); fake sent EagerEndOfTurn {ev.get('EagerEndOfTurn', 0)}, "
                        f"TurnResumed {ev.get('TurnResumed', 0)}, "
                        f"EndOfTurn {ev.get('EndOfTurn', 0)}",
                    ],
                ],
            ),
            "",
            md_table(
                [
                    "fixture",
                    "eager ms",
                    "retrieval in / out ms",
                    "RAG metric ms",
                    "first token ms",
                    "added ms",
                    "withdrawn",
                    "lookup",
                    "all RAG metrics (at ms: value ms)",
                ],
                [
                    [
                        t["name"],
                        ms(t["timing"].get("last_eager"), 0),
                        f"{ms(t['timing'].get('rag_in'), 0)} / {ms(t['timing'].get('rag_out'), 0)}",
                        ms(t["rag_s"], 1),
                        ms(t["timing"].get("token"), 0),
                        ms(t["added_s"], 1),
                        t["timing"].get("withdrawn", "–"),
                        _outcome(t),
                        ", ".join(
                            f"{1000 * at:.0f}: {1000 * val:.1f}"
                            for at, val in t["timing"].get("rag_metrics", [])
                        )
                        or "–",
                    ]
                    for t in v["turns"][:10]
                ],
            ),
        ]
    return "\n".join(lines)


def plot(variants):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for v in variants:
        added = sorted(t["added_s"] * 1000 for t in v["turns"] if t["added_s"] is not None)
        if added:
            ax.step(
                added,
                [(i + 1) / len(added) for i in range(len(added))],
                where="post",
                label=v["label"],
            )
    ax.axvline(GOAL_ADDED_S * 1000, color="r", ls="--", lw=1, label="5 ms")
    ax.axhline(GOAL_SHARE, color="g", ls=":", lw=1, label="90 % of turns")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(left=0)
    ax.set_xlabel("added latency: first token delayed past the turn's release by retrieval, ms")
    ax.set_ylabel("share of turns ≤ x")
    ax.legend(fontsize=8)
    ax.set_title("Speculative retrieval (OpenAI embeddings, 0.2 s)")
    fig.tight_layout()
    return fig


FLUX_ENV = {"BACKTALK_STT_SERVICE": "deepgram_flux"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--turns", type=int, default=30)
    p.add_argument("--no-prototype", action="store_true", help="skip the prefix-reuse variant")
    p.add_argument("--no-flux", action="store_true", help="skip the Deepgram Flux variant")
    p.add_argument("--only-flux", action="store_true", help="run only the Deepgram Flux variant")
    add_service_args(p, flux=True)
    args = p.parse_args()
    delays = service_delays(args)
    n = 5 if args.quick else args.turns
    # (label, environment, prefix-reuse prototype, Flux)
    variants_spec = [("speculation on", {}, False, False)]
    if not args.quick:
        variants_spec.append(
            ("speculation off", {"BACKTALK_SPECULATIVE_RETRIEVAL": "false"}, False, False)
        )
        if not args.no_prototype:
            variants_spec.append(("prefix reuse (prototype)", {}, True, False))
    if args.only_flux:
        variants_spec = []
    if not args.no_flux:
        flux_on = {**FLUX_ENV, "BACKTALK_SPECULATIVE_RETRIEVAL": "true"}
        variants_spec.append(("Flux, eager end of turn", flux_on, False, True))
        if not args.quick:
            # Flux's default (Settings.speculate), chosen on this comparison.
            flux_off = {**FLUX_ENV, "BACKTALK_SPECULATIVE_RETRIEVAL": "false"}
            variants_spec.append(("Flux, speculation off", flux_off, False, True))
    t0 = time.perf_counter()
    info = machine_info()
    variants = []
    with voice_world(delays, embedder="openai") as world:
        add_pg_info(info, world)
        for label, env, proto, flux in variants_spec:
            variants.append(asyncio.run(run_variant(world, label, env, n, proto, flux)))
    payload = {
        "benchmark": "speculative",
        "machine": info,
        "delays": delays,
        "wall_s": round(time.perf_counter() - t0, 1),
        "variants": variants,
    }
    name = "speculative_quick" if args.quick else "speculative"
    if args.only_flux:
        name += "_flux"
    write_results(name, payload, markdown(variants, info, delays), plot(variants))


if __name__ == "__main__":
    main()
