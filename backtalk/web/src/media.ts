// The microphone for SmallWebRTCTransport, without Daily.
//
// The transport's default media manager (DailyMediaManager) loads Daily's call machine
// from Daily's CDN, so it cannot work offline; the SDK's WavMediaManager records PCM
// for websocket transports, asks only for `{audio: true}` and swallows the device
// error. This one implements the interface SmallWebRTCTransport calls (the methods of
// transport-lib's MediaManager, read from the transport's bundled source) with a plain
// getUserMedia: the transport puts `tracks().local.audio` on its audio transceiver
// (`addUserMedia`), the bot's voice comes back as a remote WebRTC track (the page
// plays it), and mute is the track's `enabled` flag.

import {
  DeviceError,
  type DeviceErrorType,
  type PipecatClientOptions,
  type RTVIEventCallbacks,
  type Tracks,
} from "@pipecat-ai/client-js";

/** The participant the SDK reports local tracks for. */
const LOCAL_PARTICIPANT = { id: "local", name: "", local: true };

/** What the browser's processing does for speech: no echo of the bot or the video. */
const MIC_CONSTRAINTS: MediaStreamConstraints = {
  audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  video: false,
};

/** The SDK's device error category for a getUserMedia DOMException name. */
function deviceErrorType(name: string): DeviceErrorType {
  switch (name) {
    case "NotAllowedError":
    case "SecurityError":
      return "permissions";
    case "NotFoundError":
      return "not-found";
    case "NotReadableError":
    case "AbortError":
      return "in-use";
    case "OverconstrainedError":
      return "constraints";
    case "NotSupportedError":
      return "undefined-mediadevices";
    default:
      return "unknown";
  }
}

export class MicrophoneMediaManager {
  private callbacks: RTVIEventCallbacks = {};
  private options: PipecatClientOptions | undefined;
  private micEnabled = true;
  private track: MediaStreamTrack | null = null;
  private device: MediaDeviceInfo | Record<string, never> = {};

  /** No screen-share transceiver: the transport asks before adding one. */
  readonly supportsScreenShare = false;

  /** For transports that send recorded PCM (websocket); WebRTC sends the track itself. */
  setUserAudioCallback(): void {}

  setClientOptions(options: PipecatClientOptions, override = false): void {
    if (this.options && !override) return;
    this.options = options;
    this.callbacks = options.callbacks ?? {};
    this.micEnabled = options.enableMic ?? true;
  }

  /**
   * Open the microphone (PipecatClient.initDevices). A failure is reported to
   * `onDeviceError` as the SDK's DeviceError and rethrown as the browser's
   * DOMException, whose `name` says why (NotAllowedError, NotFoundError, ...).
   */
  async initialize(): Promise<void> {
    if (this.track?.readyState === "live") return;
    if (!navigator.mediaDevices?.getUserMedia) {
      throw this.failed(
        new DOMException(
          "This browser cannot use a microphone on this page: open it as http://localhost or over https.",
          "NotSupportedError",
        ),
      );
    }
    let stream: MediaStream;
    try {
      stream = await navigator.mediaDevices.getUserMedia(MIC_CONSTRAINTS);
    } catch (error) {
      throw this.failed(error);
    }
    const track = stream.getAudioTracks()[0];
    track.enabled = this.micEnabled;
    // The device went away (unplugged, or the permission was revoked) mid-conversation.
    track.addEventListener("ended", () =>
      this.callbacks.onTrackStopped?.(track, LOCAL_PARTICIPANT),
    );
    this.track = track;
    await this.reportDevices(track);
    this.callbacks.onTrackStarted?.(track, LOCAL_PARTICIPANT);
  }

  /** Called by the transport before it creates the peer connection. */
  async connect(): Promise<void> {
    await this.initialize();
  }

  /** Close the microphone (the browser's recording indicator goes off). Idempotent. */
  async disconnect(): Promise<void> {
    const track = this.track;
    if (!track) return;
    this.track = null;
    track.stop();
    this.callbacks.onTrackStopped?.(track, LOCAL_PARTICIPANT);
  }

  /** The bot's voice plays from its WebRTC track: nothing is buffered here to flush. */
  async userStartedSpeaking(): Promise<void> {}

  /** Only for transports that deliver the bot's audio as PCM (websocket). */
  bufferBotAudio(): undefined {
    return undefined;
  }

  async getAllMics(): Promise<MediaDeviceInfo[]> {
    return (await this.devices()).filter((d) => d.kind === "audioinput");
  }

  async getAllCams(): Promise<MediaDeviceInfo[]> {
    return [];
  }

  async getAllSpeakers(): Promise<MediaDeviceInfo[]> {
    return (await this.devices()).filter((d) => d.kind === "audiooutput");
  }

  /** The page uses the browser's default microphone (chosen in the site's settings). */
  async updateMic(): Promise<void> {
    console.warn("Backtalk uses the browser's default microphone; choose it in the site settings.");
  }

  /** No camera and no speaker choice: the bot speaks through the default output. */
  updateCam(): void {}
  updateSpeaker(): void {}

  get selectedMic(): MediaDeviceInfo | Record<string, never> {
    return this.device;
  }

  get selectedCam(): Record<string, never> {
    return {};
  }

  get selectedSpeaker(): Record<string, never> {
    return {};
  }

  /** Mute or unmute: the track stays on the transceiver and sends silence while disabled. */
  enableMic(enable: boolean): void {
    this.micEnabled = enable;
    const track = this.track;
    if (!track) return;
    track.enabled = enable;
    if (enable) this.callbacks.onTrackStarted?.(track, LOCAL_PARTICIPANT);
    else this.callbacks.onTrackStopped?.(track, LOCAL_PARTICIPANT);
  }

  /** The page never sends video (enableCam: false). */
  enableCam(): void {}
  enableScreenShare(): void {}

  get isCamEnabled(): boolean {
    return false;
  }

  get isMicEnabled(): boolean {
    return this.micEnabled;
  }

  get isSharingScreen(): boolean {
    return false;
  }

  tracks(): Tracks {
    return { local: this.track ? { audio: this.track } : {} };
  }

  private async devices(): Promise<MediaDeviceInfo[]> {
    return navigator.mediaDevices ? navigator.mediaDevices.enumerateDevices() : [];
  }

  /** Tell the client which microphone it got (PipecatClient marks the mic "granted"). */
  private async reportDevices(track: MediaStreamTrack): Promise<void> {
    const mics = await this.getAllMics();
    const id = track.getSettings().deviceId;
    this.device = mics.find((d) => d.deviceId === id) ?? mics[0] ?? {};
    this.callbacks.onAvailableMicsUpdated?.(mics);
    if (this.device.deviceId) this.callbacks.onMicUpdated?.(this.device as MediaDeviceInfo);
  }

  private failed(error: unknown): unknown {
    const name = error instanceof DOMException ? error.name : "Error";
    const message = error instanceof Error ? error.message : String(error);
    this.callbacks.onDeviceError?.(
      new DeviceError(["mic"], deviceErrorType(name), message, {
        sourceError: error instanceof Error ? error : new Error(message),
      }),
    );
    return error;
  }
}

/** What the page says when the microphone could not be opened. */
export function micErrorMessage(error: unknown): string {
  const name = error instanceof DOMException ? error.name : "";
  switch (name) {
    case "NotAllowedError":
      return "Microphone blocked: allow microphone access for this site (the icon in the address bar) and press Talk again.";
    case "NotFoundError":
      return "No microphone found: plug one in and press Talk again.";
    case "NotReadableError":
    case "AbortError":
      return "The microphone is busy in another app: close it and press Talk again.";
    default:
      return error instanceof Error ? error.message : String(error);
  }
}
