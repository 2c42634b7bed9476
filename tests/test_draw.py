"""--draw: the drawing page, its HTTP server under misuse, and a real browser drawing digits.

The browser tests drive Debian's Chromium through chromedriver (`apt-get install -y chromium
chromium-driver`; .ci/run does) and are skipped with the reason where it is absent, except
under REQUIRE_BROWSER=1 (set by .ci/run), where a missing browser fails them.
"""

import contextlib
import http.client
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from digitkit import data, images
from helpers import ROOT, SCRIPT, cli_environment, run_main


@contextlib.contextmanager
def draw_server(model, *flags):
    """The real CLI serving --draw on a free port; yields (port, process); Ctrl-C at the end
    must stop it with exit status 0."""
    process = subprocess.Popen([sys.executable, str(SCRIPT), "--draw", "--model", str(model),
                                "--port", "0", *flags], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=ROOT,
                               env=cli_environment())
    try:
        line = process.stdout.readline()  # printed once the model is loaded
        assert line.startswith("draw a digit at http://127.0.0.1:"), (line, process.stderr.read())
        port = int(line.split("127.0.0.1:")[1].split("/")[0])
        yield port, process
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, (out, err)
    assert out.strip().endswith("stopped") and "Traceback" not in err, (out, err)
    with socket.socket() as probe:  # nothing listens there now: a new --draw can take the port
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        probe.bind(("127.0.0.1", port))
        probe.listen()


def request(port, method, path, body=None, headers=None):
    """(status, parsed JSON or text body) of one HTTP request."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        payload = response.read()
    finally:
        connection.close()
    kind = response.getheader("Content-Type", "")
    return response.status, json.loads(payload) if "json" in kind else payload.decode(), response


def png(array):
    """PNG bytes of a uint8 array."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def huge_png_header(width, height):
    """The first bytes of a PNG that claims width x height pixels (and holds next to none)."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(1000))) + chunk(b"IEND", b""))


def a_one():
    """A drawn "1": a black bar on white, as the page sends it."""
    canvas = np.full((336, 336), 255, np.uint8)
    canvas[50:290, 155:180] = 0
    return png(canvas)


def rss_kib(pid):
    """Resident memory of a process, in KiB."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def synthetic_model(trained_synthetic):
    return trained_synthetic[0] / "model.keras"


@pytest.fixture(scope="module")
def server(synthetic_model):
    with draw_server(synthetic_model) as running:
        yield running


def test_the_page_is_one_self_contained_file(server):
    port, _ = server
    status, page, response = request(port, "GET", "/")
    assert status == 200 and response.getheader("Content-Type") == "text/html; charset=utf-8"
    assert "<canvas id=\"pad\"" in page and "pointerdown" in page and "id=\"clear\"" in page
    for outside in ("http://", "https://", "src=", "@import", "url("):
        assert outside not in page, outside
    assert page.count("<link") == page.count('<link rel="icon" href="data:,">') == 1  # no favicon
    assert "default-src 'none'" in response.getheader("Content-Security-Policy")
    assert "answers below 80% are marked unsure" in page


def test_a_drawing_gets_the_prediction_three_candidates_and_the_image_seen(server):
    port, _ = server
    status, reply, _ = request(port, "POST", "/predict", a_one(), {"Content-Type": "image/png"})
    assert status == 200 and reply["blank"] is False
    assert [c["label"] for c in reply["top"]][0] == reply["prediction"] and len(reply["top"]) == 3
    probabilities = [c["probability"] for c in reply["top"]]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-6
    seen = np.array(reply["pixels"], np.uint8).reshape(28, 28)
    expected = np.round(images.to_mnist_format(images.decode_image(io.BytesIO(a_one()))) * 255)
    np.testing.assert_array_equal(seen, expected)  # the --predict preprocessing, exactly


BAD_REQUESTS = [
    ("GET", "/nothing-here", None, {}, 404),
    ("GET", "/../../etc/passwd", None, {}, 404),
    ("GET", "/%2e%2e/%2e%2e/etc/passwd", None, {}, 404),
    ("GET", "//etc/passwd", None, {}, 404),
    ("GET", "/predict/../digit_classifier.py", None, {}, 404),
    ("GET", "/digit_classifier.py", None, {}, 404),
    ("GET", "/predict", None, {}, 405),
    ("POST", "/", b"x", {}, 405),
    ("POST", "/elsewhere", b"x", {}, 404),
    ("PUT", "/predict", b"x", {}, 405),
    ("DELETE", "/", None, {}, 405),
    ("BREW", "/", None, {}, 405),
    ("POST", "/predict", b"this is not an image", {}, 415),
    ("POST", "/predict", png(np.full((20, 20), 255, np.uint8))[:40], {}, 415),  # truncated
    ("POST", "/predict", huge_png_header(12000, 12000), {}, 415),  # 144 megapixels, it says
    ("POST", "/predict", b"x" * 10, {"Content-Length": "abc"}, 400),
]


@pytest.mark.parametrize("method, path, body, headers, expected", BAD_REQUESTS,
                         ids=[f"{m} {p} {e}" for m, p, _, _, e in BAD_REQUESTS])
def test_bad_requests_get_a_4xx_and_the_server_keeps_serving(server, method, path, body,
                                                             headers, expected):
    port, process = server
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.putrequest(method, path, skip_accept_encoding=True)
    if "Content-Length" not in headers and body is not None:
        headers = {**headers, "Content-Length": str(len(body))}
    for key, value in headers.items():
        connection.putheader(key, value)
    connection.endheaders(body)
    response = connection.getresponse()
    payload = response.read()
    connection.close()
    assert response.status == expected, payload
    if method != "HEAD":
        assert json.loads(payload)["error"]
    if expected == 405:
        assert response.getheader("Allow")
    assert process.poll() is None
    assert request(port, "POST", "/predict", a_one())[0] == 200


def test_blank_drawings_are_answered_blank_not_guessed(server):
    port, _ = server
    for blank in (np.full((336, 336), 255, np.uint8), np.full((336, 336), 250, np.uint8)):
        status, reply, _ = request(port, "POST", "/predict", png(blank))
        assert status == 422 and reply["blank"] is True and "prediction" not in reply


@pytest.mark.slow
def test_oversized_and_unsized_bodies_are_refused_unread(server):
    port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        raw.sendall(f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode()
                    + b"Content-Length: 50000000\r\n\r\n" + b"\0" * 1000)  # never sends the rest
        assert raw.recv(100).startswith(b"HTTP/1.0 413")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        raw.sendall(f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode()
                    + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.0 411")
    for _ in range(20):  # clients that hang up at once (RST): no traceback on the server
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            raw.sendall(f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
                        + b"\0" * 5000)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        raw.sendall(b"GET / NOT-HTTP\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.0 400")
    assert request(port, "POST", "/predict", a_one())[0] == 200


def test_a_content_length_of_a_non_ascii_digit_is_a_400(server):
    port, _ = server  # issue #25: "²" is a digit to str.isdigit(), not to int()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.putrequest("POST", "/predict")
        connection.putheader("Content-Length", "\xb2")
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 400
        assert "bad Content-Length" in json.loads(response.read())["error"]
    finally:
        connection.close()


def test_only_requests_to_this_server_by_its_own_name_are_answered(server):
    port, _ = server
    # A page of another site that rebinds its name to 127.0.0.1 arrives under its own name.
    for method, path, body in (("GET", "/", None), ("POST", "/predict", a_one())):
        status, reply, _ = request(port, method, path, body, {"Host": f"evil.example:{port}"})
        assert status == 403 and "answers only to" in reply["error"]
    assert request(port, "GET", "/", headers={"Host": f"localhost:{port}"})[0] == 200
    # Another site's page posting a drawing (a "simple" text/plain request needs no preflight).
    status, reply, _ = request(port, "POST", "/predict", a_one(),
                               {"Origin": "https://evil.example", "Content-Type": "text/plain"})
    assert status == 403 and "own page" in reply["error"]
    status, _, _ = request(port, "POST", "/predict", a_one(),
                           {"Origin": f"http://127.0.0.1:{port}"})
    assert status == 200


def test_drawings_beyond_those_read_at_once_are_told_to_come_back(server):
    from digitkit.draw import DRAWINGS_AT_ONCE

    port, _ = server
    stalled = []
    try:
        for _ in range(DRAWINGS_AT_ONCE):  # each sends its headers and half its body, then waits
            raw = socket.create_connection(("127.0.0.1", port), timeout=30)
            raw.sendall(f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                        f"Content-Length: 1000\r\n\r\n".encode() + b"\0" * 500)
            stalled.append(raw)
        # Once the server has read their headers it waits on their bodies, all four slots
        # taken; until then a drawing may still get through, so ask until it is turned away.
        # Each stalled one sends a byte more each time round, so that none reaches the
        # server's 15 s timeout on a slow machine and gives its slot back (seen under load).
        deadline = time.monotonic() + 120  # bounds a hang; the 503 decides
        while (status := request(port, "POST", "/predict", a_one()))[0] != 503:
            assert status[0] == 200 and time.monotonic() < deadline, status
            for raw in stalled:
                raw.sendall(b"\0")
            time.sleep(0.2)
        assert "busy" in status[1]["error"]
    finally:
        for raw in stalled:
            raw.close()
    deadline = time.monotonic() + 120  # their handlers see the bodies end and let go
    while (status := request(port, "POST", "/predict", a_one())[0]) == 503:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert status == 200  # room again


@pytest.mark.slow
def test_a_burst_of_requests_is_answered_without_growing_memory(server):
    port, process = server
    drawing = a_one()

    def burst(count):
        statuses = []

        def send(n):
            statuses.extend(request(port, "POST", "/predict", drawing)[0] for _ in range(n))

        threads = [threading.Thread(target=send, args=(count // 4,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return statuses

    assert set(burst(60)) == {200}  # warm: every code path and buffer used once
    before = rss_kib(process.pid)
    statuses = burst(400)
    after = rss_kib(process.pid)
    assert statuses == [200] * 400
    print(f"server memory: {before / 1024:.1f} MiB before 400 requests, {after / 1024:.1f} after")
    assert after - before < 20 * 1024


def test_a_taken_port_is_a_one_line_error_naming_port(synthetic_model):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_main("--draw", "--model", synthetic_model, "--port", port)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: port {port} on 127.0.0.1 is already in use; choose another with --port"]


def test_draw_usage_errors(tmp_path):
    for flags, message in ((["--draw", "--port", "70000"], "a port number from 0 to 65535"),
                           (["--port", "8000"], "--port: only with --draw"),
                           (["--draw", "--epochs", "3"], "has no effect with --draw")):
        result = run_main(*flags)
        assert result.returncode == 2 and message in result.stderr, result.stderr
    result = run_main("--draw", "--model", tmp_path / "none.keras")
    assert result.returncode == 1 and "train one first" in result.stderr


# ---------------------------------------------------------------------------
# A real browser
# ---------------------------------------------------------------------------

def browser_or_skip():
    """Chromium driven by chromedriver, headless; skipped with the reason when absent."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    reason = None
    try:
        from selenium import webdriver
    except ImportError:
        reason = "selenium is not installed (pip install -r requirements-dev.txt)"
    if reason is None and not (chromium and driver_path):
        reason = "no Chromium here: apt-get install -y chromium chromium-driver"
    if reason:
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(f"REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=900,720", "--force-device-scale-factor=1"):
        options.add_argument(argument)
    from selenium.common.exceptions import SessionNotCreatedException

    for attempt in (1, 2):  # Chromium's first start on a loaded machine can time out
        try:
            return webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path),
                                    options=options)
        except SessionNotCreatedException:
            if attempt == 2:
                raise


@pytest.fixture(scope="module")
def browser():
    driver = browser_or_skip()
    yield driver
    driver.quit()


def traced(digit):
    """Strokes that retrace an MNIST digit: along each row, one stroke over each run of ink,
    in pad units (0-1)."""
    strokes = []
    for row in range(28):
        ink = np.flatnonzero(digit[row] > 127)
        if ink.size:
            for run in np.split(ink, np.flatnonzero(np.diff(ink) > 1) + 1):
                y = (row + 0.5) / 28
                strokes.append([((run[0] + 0.5) / 28, y), ((run[-1] + 0.5) / 28, y)])
    return strokes


def by_hand(*corners, steps=12):
    """One stroke through corners (pad units), with points in between as a hand makes them."""
    points = [corners[0]]
    for start, end in zip(corners, corners[1:]):
        points += [(start[0] + (end[0] - start[0]) * t / steps,
                    start[1] + (end[1] - start[1]) * t / steps) for t in range(1, steps + 1)]
    return [points]


def draw(driver, strokes, kind):
    """Draw strokes on the pad with real pointer events of kind ("mouse", "pen", "touch")."""
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput
    from selenium.webdriver.common.by import By

    pad = driver.find_element(By.ID, "pad")
    size = pad.rect["width"]
    pointer = PointerInput({"mouse": interaction.POINTER_MOUSE, "pen": interaction.POINTER_PEN,
                            "touch": interaction.POINTER_TOUCH}[kind], kind)
    actions = ActionBuilder(driver, mouse=pointer, duration=10)

    def offset(point):  # W3C actions measure from the element's centre
        return round((point[0] - 0.5) * (size - 4)), round((point[1] - 0.5) * (size - 4))

    for stroke in strokes:
        actions.pointer_action.move_to(pad, *offset(stroke[0])).pointer_down()
        for point in stroke[1:]:
            actions.pointer_action.move_to(pad, *offset(point))
        actions.pointer_action.pointer_up()
    actions.perform()


def answer_on_page(driver):
    """Wait for the page's last request to come back; return what it shows."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return !busy && !changed"))
    return driver.execute_script("""
        const seen = document.getElementById('seen').getContext('2d').getImageData(0, 0, 28, 28);
        let ink = 0;
        for (let i = 0; i < seen.data.length; i += 4) ink += seen.data[i];
        return {prediction: document.getElementById('prediction').textContent,
                confidence: document.getElementById('confidence').textContent,
                rows: [...document.querySelectorAll('#top tr')].map(r => r.textContent),
                ink: ink};""")


@pytest.fixture(scope="module")
def mnist_digits(mnist_dir):
    arrays, _ = data.read_data_dir(mnist_dir, "mnist")
    return arrays["x_test"], arrays["y_test"]


def test_a_person_draws_digits_in_a_real_browser(browser, trained_mnist, mnist_digits,
                                                  tmp_path):
    from selenium.webdriver.common.by import By

    x_test, y_test = mnist_digits
    first = {label: x_test[np.flatnonzero(y_test == label)[0]] for label in (1, 7)}
    drawings = [("traced 1", traced(first[1]), "mouse", "1"),
                ("traced 7", traced(first[7]), "pen", "7"),
                ("a 1 by hand", by_hand((0.52, 0.15), (0.48, 0.85)), "touch", "1"),
                ("a 7 by hand", by_hand((0.25, 0.2), (0.75, 0.2), (0.42, 0.85)), "mouse", "7")]
    with draw_server(trained_mnist / "model.keras") as (port, _):
        browser.get(f"http://127.0.0.1:{port}/")
        assert browser.title == "Draw a digit"
        for name, strokes, kind, expected in drawings:
            browser.find_element(By.ID, "clear").click()
            draw(browser, strokes, kind)
            shown = answer_on_page(browser)
            print(f"{name} ({kind}): {shown['prediction']}, {shown['confidence']}")
            assert shown["prediction"] == expected, (name, shown)
            assert "% sure" in shown["confidence"] and len(shown["rows"]) == 3
            assert shown["rows"][0].startswith(expected) and shown["ink"] > 0
        screenshot = os.environ.get("DRAW_SCREENSHOT") or str(tmp_path / "draw.png")
        browser.save_screenshot(screenshot)
        browser.find_element(By.ID, "clear").click()
        cleared = answer_on_page(browser)
        assert cleared["prediction"] == "–" and cleared["ink"] == 0 and not cleared["rows"]
        # No script error and no failed request (a warning about the test's own readback of
        # the 28x28 canvas is all there may be).
        assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_draw_puts_back_the_signal_handlers_it_installed(trained_synthetic, capsys):
    import time

    from digitkit import draw
    from digitkit.config import Config

    def sentinel(signum, frame):
        """The handler a host program had before --draw."""

    previous = {sig: signal.signal(sig, sentinel) for sig in (signal.SIGINT, signal.SIGTERM)}
    done = threading.Event()

    def interrupt_once_serving():
        """Ctrl-C, once run_draw has installed its own handler."""
        while signal.getsignal(signal.SIGINT) is sentinel:
            if done.wait(0.01):
                return
        time.sleep(0.3)  # into serve_forever
        if not done.is_set():
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_once_serving, daemon=True).start()
    try:
        status = draw.run_draw(Config(quiet=True), dict(
            model=trained_synthetic[0] / "model.keras", port=0, min_confidence=0.8))
        assert status == 0
        assert signal.getsignal(signal.SIGINT) is sentinel
        assert signal.getsignal(signal.SIGTERM) is sentinel
    finally:
        done.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert capsys.readouterr().out.startswith("draw a digit at http://127.0.0.1:")


@pytest.mark.slow
def test_a_tap_leaves_a_dot_that_is_classified(browser, server):
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.by import By

    port, _ = server
    browser.get(f"http://127.0.0.1:{port}/")
    actions = ActionBuilder(browser)
    actions.pointer_action.move_to(browser.find_element(By.ID, "pad"), 10, 10)
    actions.pointer_action.pointer_down().pointer_up()
    actions.perform()
    shown = answer_on_page(browser)
    # Browsers need not paint a zero-length line: a tap drawn as one left the pad blank.
    assert shown["ink"] > 0 and "blank" not in shown["confidence"], shown
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
