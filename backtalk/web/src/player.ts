// The video: YouTube's IFrame player, or a card for caption files without a YouTube id.
//
// The IFrame API is the page's only external script. When it cannot load (offline, or
// blocked), the page says so in #yt-fallback and citations open YouTube in a new tab.

import type { Video } from "./api";
import { byId, show } from "./dom";

/** The parts of the IFrame API's `YT.Player` the page uses. */
interface YTPlayer {
  seekTo(seconds: number, allowSeekAhead: boolean): void;
  playVideo(): void;
  pauseVideo(): void;
  getPlayerState(): number;
  getCurrentTime(): number;
  getVolume(): number;
  setVolume(volume: number): void;
  loadVideoById(options: { videoId: string; startSeconds?: number }): void;
  cueVideoById(options: { videoId: string; startSeconds?: number }): void;
}

interface YTNamespace {
  Player: new (
    elementId: string,
    options: {
      videoId: string;
      playerVars: Record<string, number>;
      events: {
        onReady: () => void;
        onStateChange: (event: { data: number }) => void;
      };
    },
  ) => YTPlayer;
  PlayerState: {
    UNSTARTED: number;
    ENDED: number;
    PLAYING: number;
    PAUSED: number;
    BUFFERING: number;
    CUED: number;
  };
}

declare global {
  interface Window {
    YT?: YTNamespace;
    onYouTubeIframeAPIReady?: () => void;
  }
}

const IFRAME_API = "https://www.youtube.com/iframe_api";
/** How long the IFrame API may take to call `onYouTubeIframeAPIReady`. */
const API_TIMEOUT_MS = 5000;
/** A seek that must leave a cued video paused pauses it again if it starts within this (ms). */
const HOLD_PAUSED_MS = 1500;

/** Load the IFrame API with a script tag: its `YT`, or null if it failed or timed out. */
function loadIframeApi(): Promise<YTNamespace | null> {
  return new Promise((resolve) => {
    if (window.YT?.Player) {
      resolve(window.YT);
      return;
    }
    const timer = setTimeout(() => resolve(null), API_TIMEOUT_MS);
    window.onYouTubeIframeAPIReady = () => {
      clearTimeout(timer);
      resolve(window.YT ?? null);
    };
    const script = document.createElement("script");
    script.src = IFRAME_API;
    script.async = true;
    script.addEventListener("error", () => {
      clearTimeout(timer);
      resolve(null);
    });
    document.head.append(script);
  });
}

/** Where the player is, as the `player-position` client message reports it. */
export interface Position {
  video_key: string;
  seconds: number;
  playing: boolean;
}

export class VideoPane {
  /** The video on the stage (null: none chosen yet). */
  current: Video | null = null;
  /** Whether YouTube's player can be used: null while its script is loading. */
  youtube: boolean | null = null;

  private yt: YTNamespace | null = null;
  private player: YTPlayer | null = null;
  private ready = false;
  /** A video (and start) asked for before the player was ready. */
  private pending: { videoId: string; seconds: number; play: boolean } | null = null;
  private holdPausedUntil = 0;

  private readonly playerBox = byId("player");
  private readonly captionCard = byId("caption-card");
  private readonly emptyCard = byId("empty-card");
  private readonly fallback = byId("yt-fallback");
  private readonly fallbackCard = byId("fallback-card");

  /** `onState` is called with the position on each play, pause, end or cue. */
  constructor(private readonly onState: (position: Position) => void) {}

  /** Load the IFrame API; resolves once it is known whether YouTube can be used. */
  async init(): Promise<void> {
    this.yt = await loadIframeApi();
    this.youtube = this.yt !== null;
    show(this.fallback, !this.youtube);
    if (this.current) this.show(this.current, this.pending?.seconds ?? 0, this.pending?.play);
  }

  /** Put a video on the stage, cued at `seconds` (playing if `play`). */
  show(video: Video | null, seconds = 0, play = false): void {
    const switching = this.current?.key !== video?.key;
    this.current = video;
    const onYouTube = video?.youtube_id != null;
    show(this.emptyCard, video === null);
    show(this.captionCard, video !== null && !onYouTube);
    show(this.fallbackCard, onYouTube && this.youtube === false);
    show(this.playerBox, onYouTube && this.youtube !== false);
    byId("caption-title").textContent = video?.title ?? "";
    byId("fallback-title").textContent = video?.title ?? "";
    if (video?.youtube_id) {
      byId<HTMLAnchorElement>("fallback-link").href = `https://youtu.be/${video.youtube_id}`;
    }
    if (!onYouTube) {
      // A caption file has nothing to play: stop the previous video.
      if (this.ready && this.isPlaying()) this.player?.pauseVideo();
      return;
    }
    const videoId = video.youtube_id as string;
    if (!this.yt || !this.ready) {
      this.pending = { videoId, seconds, play };
      if (this.yt && !this.player) this.create(videoId);
      return;
    }
    if (!switching && !play) return;
    const options = { videoId, startSeconds: seconds };
    if (play) this.player?.loadVideoById(options);
    else this.player?.cueVideoById(options);
  }

  /** Go to `seconds` of `video`, keeping the player playing or paused as it was. */
  seek(video: Video, seconds: number): void {
    if (this.current?.key !== video.key || !this.player || !this.ready) {
      this.show(video, seconds, this.isPlaying());
      return;
    }
    const wasPlaying = this.isPlaying();
    const state = this.player.getPlayerState();
    const states = (this.yt as YTNamespace).PlayerState;
    this.player.seekTo(seconds, true);
    if (!wasPlaying) {
      this.player.pauseVideo();
      // seekTo starts a video that was cued or never started, maybe after this pause:
      // the user had it stopped, so it is paused again when it starts.
      if (state === states.CUED || state === states.UNSTARTED) {
        this.holdPausedUntil = performance.now() + HOLD_PAUSED_MS;
      }
    }
  }

  isPlaying(): boolean {
    if (!this.player || !this.ready || !this.yt) return false;
    const state = this.player.getPlayerState();
    return state === this.yt.PlayerState.PLAYING || state === this.yt.PlayerState.BUFFERING;
  }

  play(): void {
    this.holdPausedUntil = 0; // asked to play: a seek's "stay paused" no longer applies
    if (this.ready) this.player?.playVideo();
  }

  pause(): void {
    if (this.ready) this.player?.pauseVideo();
  }

  get volume(): number {
    return this.ready && this.player ? this.player.getVolume() : 100;
  }

  set volume(volume: number) {
    if (this.ready) this.player?.setVolume(volume);
  }

  /** The YouTube player's position, or null when no YouTube video is playing here. */
  position(): Position | null {
    if (!this.player || !this.ready || !this.current?.youtube_id || !this.yt) return null;
    return {
      video_key: this.current.key,
      seconds: this.player.getCurrentTime(),
      playing: this.player.getPlayerState() === this.yt.PlayerState.PLAYING,
    };
  }

  private create(videoId: string): void {
    const yt = this.yt as YTNamespace;
    this.player = new yt.Player("player-frame", {
      videoId,
      playerVars: { playsinline: 1, rel: 0 },
      events: {
        onReady: () => {
          this.ready = true;
          const pending = this.pending;
          this.pending = null;
          if (!pending) return;
          // Another video was chosen while the player loaded, or a start was asked for.
          if (pending.videoId !== videoId || pending.seconds > 0 || pending.play) {
            const options = { videoId: pending.videoId, startSeconds: pending.seconds };
            if (pending.play) this.player?.loadVideoById(options);
            else this.player?.cueVideoById(options);
          }
        },
        onStateChange: (event) => this.stateChanged(event.data),
      },
    });
  }

  private stateChanged(state: number): void {
    const states = (this.yt as YTNamespace).PlayerState;
    if (state === states.PLAYING && performance.now() < this.holdPausedUntil) {
      this.holdPausedUntil = 0;
      this.player?.pauseVideo();
      return;
    }
    if (state === states.BUFFERING || state === states.UNSTARTED) return;
    const position = this.position();
    if (position) this.onState(position);
  }
}
