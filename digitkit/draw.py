"""Drawing: --draw serves a page on 127.0.0.1 where a digit drawn with mouse, pen or finger is
classified as it is drawn.

The standard library's threading HTTP server, and one self-contained page (draw.html beside
this file: no script, style or font from anywhere else). Each drawing is prepared exactly
as --predict prepares an image file. Imports nothing heavy at its top: Keras comes
with the model, after a taken port has already failed.
"""

import errno
import html
import http.server
import io
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from digitkit import backend, ink
from digitkit.config import DATASETS
from digitkit.errors import RunError
from digitkit.images import BlankImageError, ImageError, decode_image
from digitkit.metrics import answer
from digitkit.messages import LOGGER
from digitkit.report import saved_record

PAGE = Path(__file__).with_name("draw.html")
log = logging.getLogger(LOGGER)
DRAWING_MAX_BYTES = 1_000_000  # larger --draw request bodies are refused unread (413)
DRAWINGS_AT_ONCE = 4  # read and classified side by side; more get 503 "busy"


def open_drawing_server(port):
    """A threading HTTP server listening on 127.0.0.1 only; a taken port is a one-line error."""
    class Server(http.server.ThreadingHTTPServer):
        """One thread per request, none holding up the exit."""

        daemon_threads = True  # a stalled client never holds up Ctrl-C

        def handle_error(self, request, client_address):
            """A client that hung up mid-reply is no error of ours; anything else is one line,
            not socketserver's traceback, and the server goes on serving."""
            error = sys.exc_info()[1]
            if not isinstance(error, (ConnectionError, TimeoutError)):
                print(f"error: request from {client_address[0]}: {type(error).__name__}: "
                      f"{error}", file=sys.stderr)

    try:
        return Server(("127.0.0.1", port), http.server.BaseHTTPRequestHandler)
    except OSError as err:
        reason = ("is already in use" if err.errno == errno.EADDRINUSE
                  else f"cannot be opened ({err.strerror})")
        raise RunError(f"port {port} on 127.0.0.1 {reason}; choose another with --port") from None


def drawing_classifier(model, class_names, min_confidence):
    """A function from a drawing's image bytes to (HTTP status, JSON-ready answer)."""
    lock = threading.Lock()  # one prediction at a time; requests arrive on many threads

    def classify_drawing(body):
        """The model's answer, with the 28x28 image it saw; blank drawings and non-images
        get a 4xx and say why."""
        try:
            digit = ink.read(decode_image(io.BytesIO(body)), single=True).digits[0]
        except BlankImageError as err:
            return 422, dict(blank=True, error=f"blank drawing: {err}")
        except ImageError as err:
            return 415, dict(blank=False, error=str(err))
        with lock:
            probabilities = ink.digit_probabilities(model.predict_on_batch, [digit])[0]
        result = answer(probabilities, class_names, min_confidence)
        return 200, dict(
            blank=False, **result, min_confidence=min_confidence,
            top=[dict(label=result["prediction"], probability=result["probability"]),
                 *result["candidates"]],
            pixels=np.round(digit.image * 255).astype(int).ravel().tolist())

    return classify_drawing


def drawing_handler(page, classify_drawing):
    """The request handler: the page at /, drawings POSTed to /predict, 4xx for the rest."""
    at_once = threading.BoundedSemaphore(DRAWINGS_AT_ONCE)

    class DrawingHandler(http.server.BaseHTTPRequestHandler):
        """GET / for the page, POST /predict for an answer; a one-line JSON error otherwise."""

        server_version = "digit_classifier"
        sys_version = ""
        default_request_version = "HTTP/1.0"  # so even a garbled request gets a status line
        timeout = 15  # seconds a client may take over its request

        def foreign(self, post=False):
            """Refuse (403) a request not addressed to this server by its own name, as a page
            of another site reaches it through DNS rebinding, or a POST another site's page
            sends; True if refused."""
            port = self.server.server_address[1]
            ours = (f"127.0.0.1:{port}", f"localhost:{port}")
            if self.headers.get("Host") not in ours:
                self.refuse(403, f"this server answers only to http://{ours[0]}/ and "
                                 f"http://{ours[1]}/")
                return True
            origin = self.headers.get("Origin")
            if post and origin is not None and origin not in [f"http://{o}" for o in ours]:
                self.refuse(403, "drawings are taken only from this server's own page")
                return True
            return False

        def do_GET(self):
            """The page; nothing else is served."""
            if self.foreign():
                return
            path = urlsplit(self.path).path
            if path == "/":
                self.reply(200, page, "text/html; charset=utf-8")
            elif path == "/predict":
                self.refuse(405, "send a drawing with POST", allow="POST")
            else:
                self.refuse(404, "not found: the page is at /")

        do_HEAD = do_GET

        def do_POST(self):
            """Classify the PNG (or any image) in the request body."""
            if self.foreign(post=True):
                return
            path = urlsplit(self.path).path
            if path != "/predict":
                return (self.refuse(405, "POST drawings to /predict", allow="GET, HEAD")
                        if path == "/" else self.refuse(404, "not found: POST to /predict"))
            length = self.headers.get("Content-Length")
            if length is None:
                return self.refuse(411, "a Content-Length header is required")
            if not (length.isascii() and length.isdigit()):  # "²" is a digit to isdigit()
                return self.refuse(400, f"bad Content-Length {length!r}")
            length = int(length)
            if length > DRAWING_MAX_BYTES:
                self.close_connection = True  # the body is never read
                return self.refuse(413, f"a drawing is at most {DRAWING_MAX_BYTES:,} bytes")
            if not at_once.acquire(blocking=False):  # memory stays bounded however many come
                self.close_connection = True
                return self.refuse(503, f"busy: {DRAWINGS_AT_ONCE} drawings are being read; "
                                        f"try again")
            try:
                body = self.rfile.read(length)
                if len(body) < length:
                    return self.refuse(400, "the body is shorter than its Content-Length")
                status, result = classify_drawing(body)
            finally:
                at_once.release()
            self.reply(status, json.dumps(result).encode(), "application/json")

        def __getattr__(self, name):
            """Any other method (PUT, DELETE, ...) is answered 405, not 501."""
            if name.startswith("do_"):
                return lambda: self.refuse(405, f"{self.command} is not allowed here",
                                           allow="GET, HEAD, POST")
            raise AttributeError(name)

        def refuse(self, status, message, allow=None):
            """A 4xx with a JSON body that says why."""
            self.reply(status, json.dumps(dict(error=message)).encode(), "application/json",
                       allow)

        def reply(self, status, payload, content_type, allow=None):
            """Send a complete response; the page may load nothing from anywhere else."""
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Content-Security-Policy", "default-src 'none'; connect-src 'self'; "
                             "img-src data:; script-src 'unsafe-inline'; "
                             "style-src 'unsafe-inline'")
            if allow:
                self.send_header("Allow", allow)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def log_message(self, format, *args):
            """Silent: the page sends a request per stroke, which would flood the terminal."""

    return DrawingHandler


def drawing_page(model_path, min_confidence):
    """The page, with what is known about the model filled in at the foot."""
    facts = [f"model: {model_path}"]
    record = saved_record(model_path)
    try:
        facts.append(f"test accuracy {record['test_accuracy']:.2%} on "
                     f"{record['dataset']['title']}")
        calibration = record.get("calibration") or {}
        facts.append(f"probabilities calibrated (temperature {calibration['temperature']:.3f})"
                     if calibration.get("fitted") else "probabilities not calibrated")
    except (KeyError, TypeError, ValueError):  # no record, not ours, or a field of another type
        pass
    facts.append(f"answers below {min_confidence:.0%} are marked unsure")
    page = PAGE.read_text(encoding="utf-8")
    return page.replace("{{facts}}", html.escape(" · ".join(facts))).encode()


def run_draw(config, options):
    """Serve the drawing page on 127.0.0.1 until Ctrl-C (or SIGTERM); returns 0 then.

    A taken port fails before Keras loads. The signal handlers installed while serving are
    put back when it returns. options: the parsed --model, --port and --min-confidence.
    """
    model_path, port, min_confidence = (options["model"], options["port"],
                                        options["min_confidence"])
    server = open_drawing_server(port)
    with server:
        backend.start(config)
        from digitkit import saved  # imports Keras, so only once backend.start has run

        model, trained_on = saved.load_saved_model(model_path, config)
        classify_drawing = drawing_classifier(model, DATASETS[trained_on]["classes"],
                                              min_confidence)
        server.RequestHandlerClass = drawing_handler(drawing_page(model_path, min_confidence),
                                                     classify_drawing)
        host, port = server.server_address[:2]
        print(f"draw a digit at http://{host}:{port}/  (Ctrl-C to stop)", flush=True)

        def stop(signum, frame):
            """Ctrl-C, or SIGTERM, stops the server."""
            raise KeyboardInterrupt

        previous = {signum: signal.signal(signum, stop)
                    for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    log.info("stopped")
    return 0
