"""Harness for Backtalk's real-browser tests (Playwright driving Debian's Chromium).

What a test gets from here:

* :func:`browser_missing` (why the browser tests must skip, or None) and
  :func:`launch_chromium`: ``/usr/bin/chromium`` with flags that work headless on a
  CI machine (``playwright install`` cannot download browsers here).
* :class:`PageUnderTest`: one browser context + page on Backtalk's server, with

  - the microphone replaced by a WebAudio stream the test speaks into
    (``tests/fixtures/web/fake_microphone.js``; :meth:`PageUnderTest.say` plays a WAV
    from ``tests/fixtures/audio/`` into it), or blocked (``mic="blocked"``);
  - a meter on the bot's received audio track
    (``tests/fixtures/web/bot_audio_meter.js``, read with :meth:`PageUnderTest.bot_audio`);
  - YouTube's IFrame API replaced by a stub player
    (``tests/fixtures/web/youtube_iframe_api_stub.js``, driven through ``window.__yt``),
    or made unreachable (``youtube="offline"``);
  - every other request that leaves the machine refused (and recorded), so the page
    is tested as it behaves without the internet, except for what is stubbed;
  - the console errors and uncaught exceptions collected.
* :class:`YouTubeReplayProxy`: an HTTPS proxy that answers for www.youtube.com from the
  recorded exchanges of :mod:`youtube_replay`, for a ``backtalk`` *process*: point
  ``BACKTALK_YOUTUBE_PROXY_URL`` at it and ``REQUESTS_CA_BUNDLE`` at its test CA.
* :func:`poll`: wait on an observable condition (never a fixed sleep).
"""

from __future__ import annotations

import datetime
import http.server
import os
import re
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

TESTS = Path(__file__).resolve().parent
WEB_FIXTURES = TESTS / "fixtures" / "web"
AUDIO = TESTS / "fixtures" / "audio"
#: Where the README's screenshots are written (``BACKTALK_SCREENSHOTS_DIR`` overrides).
SCREENSHOTS = Path(os.environ.get("BACKTALK_SCREENSHOTS_DIR") or TESTS / "screenshots")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--use-fake-ui-for-media-stream",  # grant the microphone without a prompt
    "--use-fake-device-for-media-stream",  # enumerateDevices lists a microphone
    "--autoplay-policy=no-user-gesture-required",
)
VIEWPORT = {"width": 1280, "height": 800}

YOUTUBE_IFRAME_API = "https://www.youtube.com/iframe_api"
#: Path (on the page's own origin) from which the fake microphone fetches WAVs.
AUDIO_ROUTE = "/__test__/audio/"

__all__ = [
    "AUDIO_ROUTE",
    "CHROMIUM",
    "CHROMIUM_ARGS",
    "PageUnderTest",
    "SCREENSHOTS",
    "VIEWPORT",
    "YouTubeReplayProxy",
    "browser_missing",
    "launch_chromium",
    "poll",
]


def browser_missing() -> str | None:
    """Why the browser tests cannot run here (None: they can)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install playwright)"
    if not (CHROMIUM.exists() and os.access(CHROMIUM, os.X_OK)):
        return f"{CHROMIUM} is missing (Debian: apt-get install chromium)"
    return None


def launch_chromium(playwright) -> Any:
    """Debian's Chromium, headless, with the flags this machine needs."""
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=list(CHROMIUM_ARGS)
    )


def poll(
    predicate: Callable[[], Any],
    *,
    timeout_s: float,
    what: str,
    interval_s: float = 0.1,
    sleep: Callable[[float], None] = time.sleep,
    alive: Callable[[], str | None] | None = None,
    diagnose: Callable[[], str] | None = None,
) -> Any:
    """Call ``predicate`` until it returns something truthy, and return that.

    Args:
        timeout_s: Give up after this long (generous: the machine may be busy).
        what: What is awaited, for the failure message.
        sleep: How to wait between polls (a page's ``wait_for_timeout`` keeps
            Playwright's events flowing).
        alive: Returns why waiting is pointless (e.g. the server exited), or None.
        diagnose: Extra state for the failure message.

    Raises:
        AssertionError: on timeout, or when ``alive`` reports a reason.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        reason = alive() if alive else None
        if reason is None and time.monotonic() > deadline:
            reason = f"timed out after {timeout_s:.0f}s"
        if reason is not None:
            extra = f"\n{diagnose()}" if diagnose else ""
            raise AssertionError(f"waiting for {what}: {reason}{extra}")
        sleep(interval_s)


# -- the page ---------------------------------------------------------------------------

#: A 1x1 grey PNG, answered for YouTube thumbnails.
_PIXEL_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63b8b8b8f81f0005fe02fea7d6a4b0"
    "0000000049454e44ae426082"
)


class PageUnderTest:
    """A fresh browser context and page on Backtalk's server, instrumented for tests.

    Args:
        browser: A Playwright ``Browser``.
        base_url: The server, e.g. ``http://localhost:7860``.
        mic: ``"webaudio"``: the test speaks through :meth:`say`; ``"blocked"``:
            getUserMedia rejects with ``NotAllowedError`` (the user blocked the mic).
        youtube: ``"stub"``: the IFrame API is the stub player; ``"offline"``: the
            script cannot be fetched (as without internet, or with a blocker).
        alive: Returns why waiting is pointless (the server exited), or None.
    """

    def __init__(
        self,
        browser,
        base_url: str,
        *,
        mic: Literal["webaudio", "blocked"] = "webaudio",
        youtube: Literal["stub", "offline"] = "stub",
        alive: Callable[[], str | None] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.alive = alive
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        #: URLs outside the test's servers that the page asked for (refused or stubbed).
        self.external_requests: list[str] = []
        self._refused: set[str] = set()
        self.requests: list[tuple[str, str]] = []  # (method, url) of every request
        self._failed: list = []  # Playwright Responses with a 4xx/5xx status
        self.context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
        if mic == "blocked":
            self.context.add_init_script(
                'window.__micConfig = {error: "NotAllowedError", '
                'message: "Permission denied by the test (microphone blocked)"};'
            )
        self.context.add_init_script(path=str(WEB_FIXTURES / "fake_microphone.js"))
        self.context.add_init_script(path=str(WEB_FIXTURES / "bot_audio_meter.js"))
        self.context.route(re.compile(r"^https?://"), self._route)
        self._youtube = youtube
        self.page = self.context.new_page()
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        self.page.on("request", lambda r: self.requests.append((r.method, r.url)))
        self.page.on("response", self._on_response)

    # -- routing --------------------------------------------------------------------

    def _local(self, url: str) -> bool:
        return url.startswith(self.base_url + "/") or url == self.base_url

    def _route(self, route) -> None:
        url = route.request.url
        if self._local(url):
            path = url[len(self.base_url) :]
            if path.startswith(AUDIO_ROUTE):
                name = path[len(AUDIO_ROUTE) :].split("?")[0]
                file = AUDIO / name
                if "/" in name or not file.is_file():
                    route.fulfill(status=404, body=f"no fixture {name}")
                else:
                    route.fulfill(
                        status=200, body=file.read_bytes(), headers={"Content-Type": "audio/wav"}
                    )
                return
            route.continue_()
            return
        self.external_requests.append(url)
        if url.split("?")[0] == YOUTUBE_IFRAME_API and self._youtube == "stub":
            route.fulfill(
                status=200,
                body=(WEB_FIXTURES / "youtube_iframe_api_stub.js").read_text(encoding="utf-8"),
                headers={"Content-Type": "text/javascript; charset=utf-8"},
            )
        elif re.match(r"^https://i\d?\.ytimg\.com/", url) and self._youtube == "stub":
            route.fulfill(status=200, body=_PIXEL_PNG, headers={"Content-Type": "image/png"})
        else:
            self._refused.add(url)
            route.abort("internetdisconnected")

    def _on_response(self, response) -> None:
        if response.status >= 400:
            self._failed.append(response)

    @property
    def failed_responses(self) -> list[tuple[str, str, int, str]]:
        """(method, url, status, body) of every answer with a 4xx/5xx status."""
        out = []
        for response in self._failed:
            try:
                body = response.text()[:500]
            except Exception:  # the body may be gone
                body = ""
            out.append((response.request.method, response.url, response.status, body))
        return out

    def _on_console(self, message) -> None:
        if message.type != "error":
            return
        where = (message.location or {}).get("url", "")
        # "Failed to load resource" for a request this harness refused on purpose (a
        # page offline) is not the page's error.
        if where in self._refused and message.text.startswith("Failed to load resource"):
            return
        self.console_errors.append(f"{message.text} ({where})" if where else message.text)

    # -- driving --------------------------------------------------------------------

    def open(self, path: str = "/") -> None:
        """Load the page and wait until its scripts have run."""
        self.page.goto(self.base_url + path, wait_until="load")

    def js(self, expression: str, arg: Any = None) -> Any:
        """Evaluate ``expression`` (a JS expression or function) in the page."""
        return self.page.evaluate(expression, arg)

    def until(
        self,
        condition: str | Callable[[], Any],
        what: str,
        *,
        timeout_s: float,
        arg: Any = None,
    ) -> Any:
        """Wait until a JS expression (evaluated in the page) or a Python callable is
        truthy; return its value. Fails early if the server exits."""
        if isinstance(condition, str):
            expression = condition

            def condition() -> Any:
                return self.page.evaluate(expression, arg)

        return poll(
            condition,
            timeout_s=timeout_s,
            what=what,
            sleep=lambda s: self.page.wait_for_timeout(s * 1000),
            alive=self.alive,
            diagnose=self.describe,
        )

    def now_ms(self) -> float:
        """The page's ``performance.now()``."""
        return self.page.evaluate("performance.now()")

    def say(self, wav: str) -> float:
        """Start playing ``tests/fixtures/audio/<wav>`` into the microphone; return the
        page time (ms) at which it started. :meth:`said` tells when it has ended."""
        return self.page.evaluate(
            """async (url) => {
                const t = performance.now();
                window.__lastClip = window.__mic.play(url);
                window.__lastClip.catch((e) => { window.__lastClipError = String(e); });
                return t;
            }""",
            self.base_url + AUDIO_ROUTE + wav,
        )

    def said(self) -> bool:
        """Whether the last clip played by :meth:`say` has ended (fails if it could not play)."""
        state = self.page.evaluate(
            "({error: window.__lastClipError || null, "
            "ended: (window.__mic.clips.at(-1) || {}).endedAt ?? null})"
        )
        assert state["error"] is None, f"the microphone could not play the clip: {state['error']}"
        return state["ended"] is not None

    def bot_audio(self) -> dict:
        """The meter on the received bot audio (see ``bot_audio_meter.js``)."""
        return self.page.evaluate(
            """() => { const m = window.__botAudio; return {
                tracks: m.tracks, windows: m.windows, peak: m.peak, audibleMs: m.audibleMs,
                firstAudibleAt: m.firstAudibleAt, lastAudibleAt: m.lastAudibleAt,
                quietForMs: m.quietForMs() === Infinity ? null : m.quietForMs(),
                players: m.players(), now: performance.now() }; }"""
        )

    def audible_ms_since(self, t_ms: float) -> float:
        """Milliseconds of audible bot audio received after page time ``t_ms``."""
        return self.page.evaluate("(t) => window.__botAudio.audibleMsSince(t)", t_ms)

    def youtube(self) -> dict:
        """The stub player's state: time, state, seeks, calls, videoId."""
        return self.page.evaluate(
            """() => window.__yt ? {time: __yt.time, state: __yt.state, seeks: __yt.seeks,
                calls: __yt.calls, players: __yt.players.length, videoId: __yt.videoId()} : null"""
        )

    def errors(self) -> list[str]:
        """Console errors and uncaught exceptions so far."""
        return self.console_errors + [f"uncaught: {e}" for e in self.page_errors]

    def describe(self) -> str:
        """A short account of the page's visible state, for failure messages."""
        try:
            state = self.page.evaluate(
                """() => {
                  const text = (sel) => { const el = document.querySelector(sel);
                    return el ? `${el.dataset.state || el.dataset.status || ''} ${el.innerText}`.trim().slice(0, 300) : null; };
                  return { status: text('#status'), micError: text('#mic-error'),
                    ingestStatus: text('#ingest-status'), ingestError: text('#ingest-error'),
                    conversation: text('#conversation'),
                    botAudio: window.__botAudio && {tracks: __botAudio.tracks, peak: __botAudio.peak,
                                                    audibleMs: __botAudio.audibleMs},
                    micRequests: window.__mic && __mic.requests };
                }"""
            )
        except Exception as exc:  # the page may be gone
            state = {"page": f"unavailable: {exc}"}
        errors = self.errors()
        out = f"page state: {state}"
        if errors:
            out += f"\npage errors: {errors}"
        if self.failed_responses:
            out += f"\nfailed HTTP answers: {self.failed_responses}"
        calls = [f"{m} {u}" for m, u in self.requests if m != "GET"][-10:]
        if calls:
            out += f"\nlast non-GET requests: {calls}"
        return out

    def screenshot(self, name: str) -> Path:
        """Save a full-viewport screenshot to :data:`SCREENSHOTS` and return its path."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / name
        self.page.screenshot(path=str(path))
        return path

    def close(self) -> None:
        self.context.close()


# -- YouTube, replayed for a backtalk process ------------------------------------------


def _certificates(hosts: Iterable[str]) -> tuple[bytes, bytes, bytes]:
    """A throwaway CA and a server certificate for ``hosts`` it signed.

    Returns:
        (CA certificate PEM, server certificate PEM, server key PEM).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    valid = {
        "not_valid_before": now - datetime.timedelta(hours=1),
        "not_valid_after": now + datetime.timedelta(days=2),
    }
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "Backtalk tests: YouTube replay CA")]
    )
    usage = {
        "content_commitment": False,
        "data_encipherment": False,
        "key_agreement": False,
        "encipher_only": False,
        "decipher_only": False,
    }
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid["not_valid_before"])
        .not_valid_after(valid["not_valid_after"])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                key_cert_sign=True,
                crl_sign=True,
                **usage,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    hosts = list(hosts)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid["not_valid_before"])
        .not_valid_after(valid["not_valid_after"])
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                key_cert_sign=False,
                crl_sign=False,
                **usage,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return (
        ca.public_bytes(pem),
        cert.public_bytes(pem),
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "accept-encoding",
}


class YouTubeReplayProxy:
    """An HTTP proxy whose CONNECT tunnels to YouTube end here, answered from a replay.

    ``youtube-transcript-api`` (and Backtalk's oEmbed lookup) in a ``backtalk`` process
    use it when that process has ``BACKTALK_YOUTUBE_PROXY_URL=<url>`` (Backtalk's own
    setting for reaching YouTube through a proxy) and ``REQUESTS_CA_BUNDLE=<ca_bundle>``
    (so ``requests`` trusts the certificate this proxy presents for www.youtube.com).
    Inside each tunnel the proxy terminates TLS and answers every request from
    :attr:`rsps`, a ``responses.RequestsMock`` on which the test registers the exchanges
    of :func:`youtube_replay.register_video`::

        with YouTubeReplayProxy(tmp_path) as youtube:
            register_video(youtube.rsps, "SomeVideo01", snippets=...)
            env.update(BACKTALK_YOUTUBE_PROXY_URL=youtube.url,
                       REQUESTS_CA_BUNDLE=str(youtube.ca_bundle))

    A request the replay does not know is answered ``502`` and recorded in
    :attr:`unmatched`. :meth:`hold` keeps matching requests waiting until the test
    releases them, so a test can look at the page while an ingest is under way.

    While the proxy runs, ``requests`` calls in *this* (test) process are answered by
    the mock too (``responses`` patches ``requests`` process-wide).
    """

    HOSTS = ("www.youtube.com", "youtube.com", "m.youtube.com")

    def __init__(self, directory: Path) -> None:
        import responses

        self.rsps = responses.RequestsMock(assert_all_requests_are_fired=False)
        self.ca_bundle = Path(directory) / "youtube-replay-ca.pem"
        self._cert_dir = Path(directory)
        self._lock = threading.Lock()
        self._log: list[tuple[str, str, int]] = []
        self._unmatched: list[str] = []
        self._refused: list[str] = []
        self._holds: list[tuple[str, threading.Event]] = []
        self._held: list[str] = []
        self._server: socketserver.ThreadingTCPServer | None = None
        self._thread: threading.Thread | None = None

    # -- what happened ---------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: the value for ``BACKTALK_YOUTUBE_PROXY_URL``."""
        assert self._server is not None, "the proxy is not running"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def log(self) -> list[tuple[str, str, int]]:
        """``(method, url, status)`` of every request answered inside a tunnel."""
        with self._lock:
            return list(self._log)

    @property
    def unmatched(self) -> list[str]:
        """Requests the replay had no answer for (``METHOD URL``)."""
        with self._lock:
            return list(self._unmatched)

    @property
    def refused(self) -> list[str]:
        """CONNECT targets and plain-HTTP requests refused (not YouTube)."""
        with self._lock:
            return list(self._refused)

    @property
    def held(self) -> list[str]:
        """URLs of requests that have waited (or are waiting) on a :meth:`hold`."""
        with self._lock:
            return list(self._held)

    def hold(self, url_contains: str) -> threading.Event:
        """Hold requests whose URL contains ``url_contains`` until the returned event is
        set (or two minutes pass)."""
        event = threading.Event()
        with self._lock:
            self._holds.append((url_contains, event))
        return event

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> YouTubeReplayProxy:
        ca_pem, cert_pem, key_pem = _certificates(self.HOSTS)
        self.ca_bundle.write_bytes(ca_pem)
        cert_file = self._cert_dir / "youtube-replay-server.pem"
        cert_file.write_bytes(cert_pem + key_pem)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert_file)
        self.rsps.start()
        self._server = _ProxyServer(("127.0.0.1", 0), _ProxyHandler, self, tls)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="youtube-replay-proxy", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        with self._lock:
            for _, event in self._holds:
                event.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self.rsps.stop()
        self.rsps.reset()

    # -- answering (proxy threads) -------------------------------------------------------

    def _answer(self, method: str, url: str, headers: dict[str, str], body: bytes):
        import requests

        with self._lock:
            holds = [event for part, event in self._holds if part in url]
            if holds:
                self._held.append(url)
        for event in holds:
            event.wait(120)
        try:
            response = requests.request(
                method, url, headers=headers, data=body or None, allow_redirects=False, timeout=10
            )
        except requests.ConnectionError as exc:  # responses: no registered match
            with self._lock:
                self._unmatched.append(f"{method} {url}")
                self._log.append((method, url, 502))
            message = f"YouTube replay has no answer for {method} {url}: {exc}".encode()
            return 502, {"Content-Type": "text/plain; charset=utf-8"}, message
        with self._lock:
            self._log.append((method, url, response.status_code))
        out = {
            k: v
            for k, v in response.headers.items()
            if k.lower() not in _HOP_BY_HOP and k.lower() != "content-encoding"
        }
        return response.status_code, out, response.content


class _ProxyServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, handler, proxy: YouTubeReplayProxy, tls: ssl.SSLContext):
        self.proxy = proxy
        self.tls = tls
        super().__init__(address, handler)


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    """The proxy's side of the client connection: CONNECT, then HTTP inside TLS."""

    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def log_message(self, format: str, *args) -> None:  # quiet
        pass

    def do_CONNECT(self) -> None:  # noqa: N802 (http.server's naming)
        host, _, port = self.path.partition(":")
        proxy = self.server.proxy
        if host not in proxy.HOSTS or port not in ("", "443"):
            with proxy._lock:
                proxy._refused.append(f"CONNECT {self.path}")
            self.send_error(403, f"the YouTube replay proxy only serves {', '.join(proxy.HOSTS)}")
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        self.wfile.flush()
        try:
            tunnel = self.server.tls.wrap_socket(self.connection, server_side=True)
        except (ssl.SSLError, OSError):
            self.close_connection = True
            return
        try:
            _TunnelHandler(tunnel, self.client_address, self.server, host)
        finally:
            self.close_connection = True
            try:
                tunnel.close()
            except OSError:
                pass

    def _plain(self) -> None:
        with self.server.proxy._lock:
            self.server.proxy._refused.append(f"{self.command} {self.path}")
        self.send_error(502, "the YouTube replay proxy serves HTTPS (CONNECT) only")

    do_GET = do_POST = do_HEAD = _plain  # noqa: N815


class _TunnelHandler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 requests inside one TLS tunnel, answered by the replay."""

    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def __init__(self, sock, client_address, server, host: str) -> None:
        self.host = host
        super().__init__(sock, client_address, server)

    def log_message(self, format: str, *args) -> None:  # quiet
        pass

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        url = f"https://{self.host}{self.path}"
        status, out, content = self.server.proxy._answer(self.command, url, headers, body)
        self.send_response(status)
        for k, v in out.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(content)
        self.wfile.flush()

    do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _forward  # noqa: N815
