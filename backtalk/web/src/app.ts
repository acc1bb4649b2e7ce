// Backtalk's page: choose a video, press Talk, and talk with it out loud.
//
// A conversation is a Pipecat client session over SmallWebRTC (see media.ts for the
// microphone). The server's RTVI events drive the status pill and the live captions;
// its server messages add citation chips and latency bars, and the page tells it where
// the video is (player-position) so "what did she just say?" can be answered.

import {
  LogLevel,
  PipecatClient,
  TransportStartError,
  type RTVIEventCallbacks,
  type RTVIMessage,
} from "@pipecat-ai/client-js";
import { SmallWebRTCTransport } from "@pipecat-ai/small-webrtc-transport";

import { ApiError, api, auth, type Citation, type Video } from "./api";
import { ConversationView, type TurnLatency } from "./conversation";
import { byId, h, setMessage } from "./dom";
import { HistoryView } from "./history";
import { LinkBox } from "./ingest";
import { Library } from "./library";
import { MicrophoneMediaManager, micErrorMessage } from "./media";
import { VideoPane, type Position } from "./player";
import { TranscriptView } from "./transcript";
import "./styles.css";

type State = "idle" | "connecting" | "listening" | "thinking" | "speaking" | "error";

const STATE_LABELS: Record<State, string> = {
  idle: "Ready to talk",
  connecting: "Connecting…",
  listening: "Listening",
  thinking: "Thinking…",
  speaking: "Speaking",
  error: "Not connected",
};

type PauseMode = "pause" | "duck" | "off";
const PAUSE_MODE_KEY = "backtalk.pause-mode";
/** The video's volume while the user talks, in "duck" mode (a fraction of its volume). */
const DUCK_FACTOR = 0.2;
/** The answer is over once the bot has been quiet this long (ms): the video resumes. */
const RESUME_AFTER_MS = 800;
/** The user stopped talking but no answer started within this (ms): back to listening. */
const THINKING_GIVE_UP_MS = 10000;
/** How often the playhead is reported while the video plays (ms). */
const POSITION_EVERY_MS = 1000;

/** One conversation: a Pipecat client and its microphone. */
interface Session {
  client: PipecatClient;
  media: MicrophoneMediaManager;
  /** bot-ready received: messages can be sent. */
  ready: boolean;
  /** The user pressed Talk again to end (or cancel) it. */
  ending: boolean;
  botSpeaking: boolean;
  /** The server ended the conversation (a goodbye, or its time limit). */
  botLeft: boolean;
  conversationId: number | null;
}

const talkButton = byId<HTMLButtonElement>("talk-button");
const talkLabel = byId("talk-label");
const muteButton = byId<HTMLButtonElement>("mute-button");
const status = byId("status");
const statusLabel = byId("status-label");
const micError = byId("mic-error");
const talkError = byId("talk-error");
const talkNotice = byId("talk-notice");
const personaSelect = byId<HTMLSelectElement>("persona-select");
const pauseModeSelect = byId<HTMLSelectElement>("pause-mode");
const botAudio = byId<HTMLAudioElement>("bot-audio");

let session: Session | null = null;
/** What the page did to the video when the user started talking, to undo after the answer. */
let held: { mode: "pause" } | { mode: "duck"; volume: number } | null = null;
let resumeTimer: ReturnType<typeof setTimeout> | undefined;
let thinkingTimer: ReturnType<typeof setTimeout> | undefined;

const pane = new VideoPane(playerStateChanged);
const transcript = new TranscriptView((video, seconds) => openAt(video, seconds));
const conversation = new ConversationView(openCitation);
const history = new HistoryView(openCitation);
const library = new Library(selectionChanged);
new LinkBox(async (video) => {
  await library.refresh();
  // During a conversation its videos are fixed; #library-locked says so.
  if (!session) library.select([video.key]);
});

// -- state ------------------------------------------------------------------------------

function setState(state: State): void {
  status.dataset.state = state;
  statusLabel.textContent =
    state === "idle" && library.selection.length === 0 ? "Choose a video" : STATE_LABELS[state];
  talkLabel.textContent = !session ? "Talk" : session.ready ? "End" : "Cancel";
  talkButton.setAttribute("aria-pressed", String(session !== null));
  talkButton.disabled = !session && library.selection.length === 0;
  talkButton.title = talkButton.disabled ? "Choose a video to talk about first" : "";
}

function setMuted(muted: boolean): void {
  muteButton.setAttribute("aria-pressed", String(muted));
  muteButton.title = muted ? "Your microphone is muted" : "Mute your microphone";
}

// -- the conversation -------------------------------------------------------------------

talkButton.addEventListener("click", () => {
  if (session) void stopSession(session);
  else void startSession();
});

async function startSession(): Promise<void> {
  const videos = library.selection;
  if (videos.length === 0) return;
  setMessage(micError, "");
  setMessage(talkError, "");
  setMessage(talkNotice, "");
  const media = new MicrophoneMediaManager();
  const transport = new SmallWebRTCTransport({
    offerUrlTemplate: "/sessions/:sessionId/api/offer",
    waitForICEGathering: true,
    mediaManager: media,
  });
  const s: Session = {
    client: undefined as unknown as PipecatClient, // set just below: its callbacks need `s`
    media,
    ready: false,
    ending: false,
    botSpeaking: false,
    botLeft: false,
    conversationId: null,
  };
  s.client = new PipecatClient({
    transport,
    enableMic: true,
    enableCam: false,
    callbacks: callbacksFor(s),
  });
  s.client.setLogLevel(LogLevel.WARN);
  session = s;
  library.setLocked(true);
  setState("connecting");

  // The microphone first: if it cannot be opened, no session is started on the server.
  try {
    await s.client.initDevices();
  } catch (error) {
    if (s.ending) return;
    setMessage(micError, micErrorMessage(error));
    endSession(s, "idle");
    return;
  }
  // startBot then connect (what startBotAndConnect does), so that a Cancel pressed while
  // the server starts the bot does not connect afterwards.
  try {
    if (s.ending) throw new Error("cancelled");
    const connection = await s.client.startBot({
      endpoint: "/api/sessions",
      headers: new Headers(auth.headers()),
      requestData: { videos, persona: personaSelect.value },
    });
    if (s.ending) throw new Error("cancelled");
    await s.client.connect(connection);
    if (s.ending) throw new Error("cancelled"); // connected just as Cancel was pressed
  } catch (error) {
    await s.client.disconnect().catch(() => undefined);
    await media.disconnect(); // the microphone may have opened after Cancel
    if (s.ending || (session !== s && session !== null)) return;
    const message = error instanceof Error ? error.message : String(error);
    setMessage(
      talkError,
      message === "Failed to fetch"
        ? "Could not reach the Backtalk server: is `backtalk talk` still running?"
        : `Could not start the conversation: ${message}`,
    );
    endSession(s, "error");
  }
}

// SmallWebRTCTransport rejects an internal "connected" promise that nobody awaits when
// it is stopped while its offer is in flight (Cancel while connecting). The page learns
// of every failed connection from connect() or onDisconnected, so that rejection is
// only noise: keep it out of the console.
window.addEventListener("unhandledrejection", (event) => {
  if (event.reason instanceof TransportStartError) event.preventDefault();
});

async function stopSession(s: Session): Promise<void> {
  s.ending = true;
  try {
    await s.client.disconnect();
  } finally {
    endSession(s, "idle");
  }
}

/** Tidy up after a conversation, however it ended. */
function endSession(s: Session, state: "idle" | "error"): void {
  if (session !== s) return;
  session = null;
  void s.media.disconnect();
  botAudio.srcObject = null;
  clearTimeout(resumeTimer);
  clearTimeout(thinkingTimer);
  // A paused video stays paused (the user may be reading the answer); the volume comes back.
  if (held?.mode === "duck") pane.volume = held.volume;
  held = null;
  conversation.sessionEnded();
  library.setLocked(false);
  muteButton.disabled = true;
  setMuted(false);
  setState(state);
  void history.refresh(library.focus, s.conversationId);
}

function callbacksFor(s: Session): RTVIEventCallbacks {
  // Events of a session that is over (a late callback after a new Talk) are ignored.
  const live = () => session === s;
  return {
    onBotReady: () => {
      if (!live()) return;
      s.ready = true;
      muteButton.disabled = false;
      conversation.sessionStarted();
      setState("listening");
      reportPosition();
    },
    onBotDisconnected: () => {
      if (live()) s.botLeft = true; // the client disconnects next
    },
    onDisconnected: () => {
      if (!live() || s.ending) return;
      if (s.botLeft && s.ready) {
        setMessage(talkNotice, "The conversation has ended. Press Talk to start a new one.");
      } else {
        setMessage(
          talkError,
          s.ready
            ? "The conversation ended: the connection to the server closed."
            : "Could not start the conversation: the connection closed before the bot was ready.",
        );
      }
      endSession(s, s.ready ? "idle" : "error");
    },
    onError: (message: RTVIMessage) => {
      if (!live()) return;
      const data = message.data as { error?: string; message?: string } | undefined;
      const text = data?.error ?? data?.message;
      if (text) setMessage(talkError, text);
    },
    onTrackStarted: (track, participant) => {
      // The bot's voice (the transport reports remote tracks without a participant).
      if (!live() || participant?.local || track.kind !== "audio") return;
      botAudio.srcObject = new MediaStream([track]);
      botAudio.play().catch((error: DOMException) => {
        if (error.name === "NotAllowedError") {
          setMessage(
            talkError,
            "The browser blocked the bot's voice: click anywhere on the page to hear it.",
          );
          document.addEventListener("click", () => void botAudio.play(), { once: true });
        }
      });
    },
    onUserStartedSpeaking: () => {
      if (!live()) return;
      reportPosition(); // where the user was when they started asking
      holdVideo();
      conversation.userStartedSpeaking(s.botSpeaking);
      clearTimeout(thinkingTimer);
      setState("listening");
    },
    onUserStoppedSpeaking: () => {
      if (!live()) return;
      setState("thinking");
      clearTimeout(thinkingTimer);
      thinkingTimer = setTimeout(() => {
        if (live() && status.dataset.state === "thinking") setState("listening");
      }, THINKING_GIVE_UP_MS);
    },
    onBotLlmStarted: () => clearTimeout(thinkingTimer), // an answer is on its way
    onBotStartedSpeaking: () => {
      if (!live()) return;
      s.botSpeaking = true;
      clearTimeout(resumeTimer);
      clearTimeout(thinkingTimer);
      setState("speaking");
    },
    onBotStoppedSpeaking: () => {
      if (!live()) return;
      s.botSpeaking = false;
      conversation.botStoppedSpeaking();
      setState("listening");
      clearTimeout(resumeTimer);
      resumeTimer = setTimeout(releaseVideo, RESUME_AFTER_MS);
    },
    onUserTranscript: (data) => {
      if (live()) conversation.userTranscript(data.text, data.final);
    },
    onBotOutput: (data) => {
      if (live()) conversation.botOutput(data);
    },
    onServerMessage: (data) => {
      if (!live()) return;
      switch (data?.type) {
        case "citation":
          conversation.citation(data as Citation);
          break;
        case "turn-latency":
          conversation.latency(data as TurnLatency);
          break;
        case "persona":
          showPersona(data.persona);
          break;
        case "session":
          s.conversationId = data.conversation_id;
          break;
      }
    },
  };
}

muteButton.addEventListener("click", () => {
  if (!session?.ready) return;
  const muted = muteButton.getAttribute("aria-pressed") !== "true";
  session.client.enableMic(!muted);
  setMuted(muted);
});

// -- persona ----------------------------------------------------------------------------

function personaOption(persona: string): HTMLOptionElement {
  return h("option", { value: persona }, persona.charAt(0).toUpperCase() + persona.slice(1));
}

/** Show the persona the server says is in use (adding it if the list lacks it). */
function showPersona(persona: string): void {
  if (![...personaSelect.options].some((o) => o.value === persona)) {
    personaSelect.append(personaOption(persona));
  }
  personaSelect.value = persona;
}

personaSelect.addEventListener("change", () => {
  // Not connected: it is the persona the next conversation starts with.
  if (session?.ready) sendMessage("set-persona", { persona: personaSelect.value });
});

// -- the video while the user talks -----------------------------------------------------

function pauseMode(): PauseMode {
  return pauseModeSelect.value as PauseMode;
}

/** Pause (or duck) the video if it is playing: the user is talking. */
function holdVideo(): void {
  clearTimeout(resumeTimer);
  if (held || !pane.isPlaying()) return;
  if (pauseMode() === "pause") {
    held = { mode: "pause" };
    pane.pause();
  } else if (pauseMode() === "duck") {
    held = { mode: "duck", volume: pane.volume };
    pane.volume = Math.round(held.volume * DUCK_FACTOR);
  }
}

/** The answer is over: undo what holdVideo did. */
function releaseVideo(): void {
  if (!held) return;
  if (held.mode === "pause") pane.play();
  else pane.volume = held.volume;
  held = null;
}

try {
  const saved = localStorage.getItem(PAUSE_MODE_KEY);
  if (saved === "pause" || saved === "duck" || saved === "off") pauseModeSelect.value = saved;
} catch {
  // Storage is unavailable (a privacy mode): the default, pause, it is.
}
pauseModeSelect.addEventListener("change", () => {
  try {
    localStorage.setItem(PAUSE_MODE_KEY, pauseMode());
  } catch {
    // Not remembered; it still applies to this page.
  }
  if (pauseMode() === "off") releaseVideo();
});

// -- the playhead -----------------------------------------------------------------------

function sendMessage(type: string, data: unknown): void {
  if (!session?.ready) return;
  try {
    session.client.sendClientMessage(type, data);
  } catch {
    // The connection is closing; the session's end is handled by onDisconnected.
  }
}

/** Tell the server where the video is (only YouTube videos have a playhead). */
function reportPosition(): void {
  const position = pane.position();
  if (position) sendMessage("player-position", position);
}

function playerStateChanged(position: Position): void {
  // The user pressed play while the page held the video for them: it is theirs again.
  if (held?.mode === "pause" && position.playing) held = null;
  transcript.markPlaying(position.seconds);
  sendMessage("player-position", position);
}

setInterval(() => {
  const position = pane.position();
  if (!position?.playing) return;
  transcript.markPlaying(position.seconds);
  sendMessage("player-position", position);
}, POSITION_EVERY_MS);

// -- citations --------------------------------------------------------------------------

function youtubeUrl(videoId: string, seconds: number): string {
  return `https://youtu.be/${videoId}?t=${Math.floor(seconds)}`;
}

/** A citation chip was pressed (live or in a saved conversation). */
function openCitation(citation: Citation): void {
  const video = library.byKey(citation.video_key);
  const videoId = citation.video_id ?? video?.youtube_id ?? null;
  const canShow = video && (library.selection.includes(video.key) || !session);
  if (videoId && (pane.youtube === false || !canShow)) {
    window.open(citation.url ?? youtubeUrl(videoId, citation.seconds), "_blank", "noopener");
    return;
  }
  if (video && canShow) openAt(video, citation.seconds);
}

/** Show `seconds` of `video`: seek the player, or highlight the transcript line. */
function openAt(video: Video, seconds: number): void {
  if (video.youtube_id && pane.youtube !== false) {
    pane.seek(video, seconds);
    byId("player").scrollIntoView({ block: "nearest", behavior: "smooth" });
    // A seek while paused changes no player state: report the new position here.
    setTimeout(reportPosition, 200);
  } else {
    selectTab("transcript");
    void transcript.highlight(video, seconds);
  }
  // Put the video on the stage (choosing it, if no conversation holds the choice).
  if (library.selection.includes(video.key)) library.setFocus(video.key);
  else if (!session) library.select([video.key]);
}

// -- selection, tabs --------------------------------------------------------------------

function selectionChanged(): void {
  const video = library.focused;
  pane.show(video);
  void transcript.load(video);
  void history.refresh(video?.key ?? null);
  const chosen = library.selected;
  byId("selection-summary").textContent =
    chosen.length === 0
      ? "No video chosen"
      : chosen.length === 1
        ? `About “${chosen[0].title}”`
        : `About ${chosen.length} videos: ${chosen.map((v) => `“${v.title}”`).join(", ")}`;
  if (!session) setState(status.dataset.state === "error" ? "error" : "idle");
}

const tabs = ["transcript", "history"] as const;

function selectTab(name: (typeof tabs)[number]): void {
  for (const tab of tabs) {
    const button = byId(`tab-${tab}`);
    button.setAttribute("aria-selected", String(tab === name));
    button.tabIndex = tab === name ? 0 : -1;
    byId(`panel-${tab}`).hidden = tab !== name;
  }
}

tabs.forEach((tab, i) => {
  const button = byId(`tab-${tab}`);
  button.addEventListener("click", () => selectTab(tab));
  button.addEventListener("keydown", (event) => {
    if (event.key !== "ArrowLeft" && event.key !== "ArrowRight") return;
    const next = tabs[(i + (event.key === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length];
    selectTab(next);
    byId(`tab-${next}`).focus();
  });
});

// -- start ------------------------------------------------------------------------------

async function load(): Promise<void> {
  try {
    const [config] = await Promise.all([api.config(), library.refresh()]);
    personaSelect.replaceChildren(...config.personas.map(personaOption));
    showPersona(config.persona);
    library.select(config.videos.map((v) => v.key));
    setMessage(byId("app-error"), "");
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return; // the key form is shown
    setMessage(byId("app-error"), `Could not load Backtalk: ${(error as Error).message}`);
  }
}

// -- API key (backtalk serve) -----------------------------------------------------------

const keyForm = byId<HTMLFormElement>("key-form");
const keyInput = byId<HTMLInputElement>("key-input");

auth.onUnauthorized = () => {
  // A key that was sent and refused (wrong or revoked) is forgotten.
  const refused = auth.key !== null;
  auth.clear();
  keyForm.hidden = false;
  setMessage(byId("key-error"), refused ? "That key was not accepted: check it, or ask for a new one." : "");
  keyInput.focus();
};

keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  if (!keyInput.value.trim()) return;
  auth.set(keyInput.value);
  keyInput.value = "";
  keyForm.hidden = true;
  void load();
});

async function start(): Promise<void> {
  setState("idle");
  void pane.init();
  await load();
}

void start();
