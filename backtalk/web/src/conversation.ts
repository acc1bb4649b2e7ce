// The live conversation: the user's words as they are recognised, the bot's as they are
// spoken, with the answer's citation chips and its latency bar.

import type { BotOutputData } from "@pipecat-ai/client-js";
import type { Citation } from "./api";
import { citationItem, withoutCitationTags } from "./citations";
import { byId, h } from "./dom";

/** The `turn-latency` server message (seconds; any part may be null). */
export interface TurnLatency {
  end_of_turn_s: number | null;
  stt_s: number | null;
  retrieval_s: number | null;
  llm_s: number | null;
  first_sentence_s: number | null;
  tts_s: number | null;
  total_s: number | null;
}

/** The latency bar's segments, in the order the turn goes through them. */
const LATENCY_PARTS: [keyof TurnLatency, string][] = [
  ["end_of_turn_s", "end of turn"],
  ["stt_s", "stt"],
  ["retrieval_s", "retrieval"],
  ["llm_s", "llm"],
  ["first_sentence_s", "first sentence"],
  ["tts_s", "tts"],
];
/** Seconds the full width of a latency bar stands for (more if a turn's parts add up to more). */
const LATENCY_SCALE_S = 3;
/** How close to the bottom (px) the reader must be for new words to scroll the view. */
const STICK_TO_BOTTOM_PX = 80;

interface UserTurn {
  element: HTMLElement;
  text: HTMLElement;
  finals: string[];
  interim: string;
}

interface BotTurn {
  element: HTMLElement;
  text: HTMLElement;
  /** Spoken text per segment (a sentence, usually), in the order they started. */
  segments: Map<number, { text: string; spoken: boolean }>;
  citations: HTMLElement;
  cited: Set<string>;
  latency: HTMLElement;
}

export class ConversationView {
  private readonly root = byId("conversation");
  private readonly empty = byId("conversation-empty");
  private user: UserTurn | null = null;
  private bot: BotTurn | null = null;
  /** Segments of answers that are over: their late messages must not start a new turn. */
  private readonly closedSegments = new Set<number>();

  /** `open(citation)`: a citation chip was pressed. */
  constructor(private readonly open: (citation: Citation) => void) {}

  /** A new conversation begins: a divider under the previous one, if any. */
  sessionStarted(): void {
    this.closeBotTurn(false);
    this.user = null;
    if (!this.root.querySelector(".turn")) return;
    const time = new Date().toLocaleTimeString(undefined, { timeStyle: "short" });
    this.append(
      h("div", { class: "session-divider", role: "separator" }, `New conversation · ${time}`),
    );
  }

  /** The conversation ended: an answer still being spoken was cut off. */
  sessionEnded(): void {
    this.closeBotTurn(this.hasUnspokenText());
    this.user = null;
  }

  /** The user started talking: the answer so far is over (cut off if still being spoken). */
  userStartedSpeaking(botWasSpeaking: boolean): void {
    this.closeBotTurn(botWasSpeaking || this.hasUnspokenText());
  }

  /** The bot stopped speaking: a sentence it had not finished was cut off. */
  botStoppedSpeaking(): void {
    if (this.hasUnspokenText()) this.closeBotTurn(true);
  }

  /** A `user-transcription`: interim words replace each other until a final one. */
  userTranscript(text: string, final: boolean): void {
    if (!text.trim()) return;
    const turn = this.user ?? this.newUserTurn();
    if (final) {
      turn.finals.push(text.trim());
      turn.interim = "";
    } else {
      turn.interim = text.trim();
    }
    this.update(() => {
      turn.text.textContent = [...turn.finals, turn.interim].filter(Boolean).join(" ");
      turn.element.classList.toggle("interim", turn.interim !== "");
    });
  }

  /**
   * A `bot-output`: show each segment's text once it is spoken. A segment is announced
   * ("new") before it is spoken, then reported "in-progress" word by word (TTS services
   * with word timestamps) and "completed" once its last word is spoken.
   */
  botOutput(data: BotOutputData): void {
    const id = data.segment_id;
    if (id !== undefined && this.closedSegments.has(id)) return;
    if (data.will_be_spoken === false) return; // text the bot does not say aloud
    let spoken: boolean;
    let text: string;
    if (data.spoken_status === undefined) {
      // An older server (RTVI 1.x): one message per spoken sentence.
      if (!data.spoken) return;
      spoken = true;
      text = data.text;
    } else {
      spoken = data.spoken_status === "completed";
      text =
        data.spoken_status === "new" ? "" : (data.spoken_progress?.accumulated_text ?? data.text);
    }
    const turn = this.bot ?? this.newBotTurn();
    const key = id ?? -turn.segments.size - 1; // no id (older server): its own segment
    turn.segments.set(key, { text: withoutCitationTags(text).trim(), spoken });
    this.update(() => {
      turn.text.textContent = [...turn.segments.values()]
        .map((s) => s.text)
        .filter(Boolean)
        .join(" ");
    });
  }

  /** A `citation` server message: a chip on the current answer. */
  citation(citation: Citation): void {
    const turn = this.bot ?? this.newBotTurn();
    const key = `${citation.video_key}@${citation.seconds}`;
    if (turn.cited.has(key)) return;
    turn.cited.add(key);
    this.update(() => turn.citations.append(citationItem(citation, this.open)));
  }

  /** A `turn-latency` server message: where the time to the answer went. */
  latency(latency: TurnLatency): void {
    const turn = this.bot ?? this.newBotTurn();
    const parts = LATENCY_PARTS.map(([part, label]) => ({ part, label, s: latency[part] ?? null }));
    const sum = parts.reduce((total, p) => total + (p.s ?? 0), 0);
    const total = latency.total_s ?? sum;
    const scale = Math.max(LATENCY_SCALE_S, sum);
    const segments = parts.map(({ part, label, s }) =>
      h("span", {
        "data-part": part,
        style: `width: ${(((s ?? 0) / scale) * 100).toFixed(2)}%`,
        title: s === null ? `${label} not measured` : `${label} ${s.toFixed(2)} s`,
      }),
    );
    const summary = parts
      .filter((p) => p.s !== null)
      .map((p) => `${p.label} ${(p.s as number).toFixed(2)} s`)
      .join(", ");
    this.update(() =>
      turn.latency.replaceChildren(
        h(
          "div",
          {
            class: "latency-bar",
            role: "img",
            "aria-label": `Answered in ${total.toFixed(2)} s: ${summary}`,
          },
          ...segments,
        ),
        h(
          "span",
          {
            class: "latency-total",
            title: "From the end of your question to the first word of the answer",
          },
          `${total.toFixed(2)} s`,
        ),
      ),
    );
  }

  private hasUnspokenText(): boolean {
    return this.bot !== null && [...this.bot.segments.values()].some((s) => !s.spoken);
  }

  /** Stop adding to the current answer; `interrupted`: it was cut off. */
  private closeBotTurn(interrupted: boolean): void {
    const turn = this.bot;
    if (!turn) return;
    this.bot = null;
    for (const id of turn.segments.keys()) this.closedSegments.add(id);
    if (interrupted) {
      turn.element.classList.add("interrupted");
      turn.element
        .querySelector(".turn-who")
        ?.append(h("span", { class: "turn-note" }, "interrupted"));
    }
  }

  private newUserTurn(): UserTurn {
    const text = h("p", { class: "turn-text" });
    const element = h(
      "article",
      { class: "turn user interim" },
      h("div", { class: "turn-who" }, "You"),
      text,
    );
    this.user = { element, text, finals: [], interim: "" };
    this.append(element);
    return this.user;
  }

  private newBotTurn(): BotTurn {
    this.user = null; // the question is over; later words start a new one
    const text = h("p", { class: "turn-text" });
    const citations = h("div", { class: "citations" });
    const latency = h("div", { class: "latency" });
    const element = h(
      "article",
      { class: "turn bot" },
      h("div", { class: "turn-who" }, "Backtalk"),
      text,
      citations,
      latency,
    );
    this.bot = { element, text, segments: new Map(), citations, cited: new Set(), latency };
    this.append(element);
    return this.bot;
  }

  private append(element: HTMLElement): void {
    this.update(() => this.root.append(element));
    this.empty.hidden = true;
  }

  /** Apply a change, keeping the view scrolled to the newest words if the reader was there. */
  private update(change: () => void): void {
    const root = this.root;
    const atBottom = root.scrollHeight - root.scrollTop - root.clientHeight < STICK_TO_BOTTOM_PX;
    change();
    if (atBottom) root.scrollTop = root.scrollHeight;
  }
}
