"""
The live dashboard (srpy/dashboard.py, srpy/monitor.py) against real engines: the status that feeds
it (the task a call runs, tasks done), its JSON while a map runs, a busy engine's stack, the peer
mesh, the secret when it asks for one, its refusals, the two commands that serve it, and the page
itself in a real headless Chromium driven through selenium (Debian's chromium and chromedriver).

The browser test saves a screenshot to doc/dashboard.png when SRPY_DASHBOARD_SCREENSHOT=1.
"""

import http.client
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse

import pytest

import srpy
from conftest import ROOT, SRPYAPP, Background, die_with_parent
from srpy import dashboard, monitor
from srpy.errors import SRPyError

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def nap(gate, x):
    """A task of a map that lasts a moment, until the test opens the gate (then it ends at once)."""
    import os
    import time
    if not os.path.exists(gate):
        time.sleep(0.05)
    return x


def twice(x):
    return 2 * x


def hold(gate):
    """A task that runs until the test opens the gate."""
    import os
    import time
    while not os.path.exists(gate):
        time.sleep(0.01)
    return "held"


def wait_until(condition, timeout=30.0, what="the state"):
    """The value of C{condition()} once it is true; fails after C{timeout} seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, "%s did not come within %s s" % (what, timeout)
        time.sleep(0.05)


class RunningMap:
    """A long map over some engines (in a thread) that ends once C{stop()} opens its gate."""

    def __init__(self, box, tmp_path, count=100000):
        self.gate = str(tmp_path / "gate")
        self.box = box
        self.run = Background(lambda: list(box.map(nap, [self.gate] * count, range(count))))

    def stop(self):
        open(self.gate, "w").close()
        return self.run.result(60)


@pytest.fixture
def board(pair):
    """A dashboard of the pair's two engines, on loopback, any free port."""
    served = dashboard.Dashboard(monitor.Monitor(monitor.fixed(pair)), port=0).start()
    yield served
    served.close()


def request(board, method, path, body=None, headers=None):
    """(status, headers, body bytes) of one request to the dashboard, made as a program would."""
    host, port = board.address
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def state(board, headers=None):
    code, _, body = request(board, "GET", "/api/state", headers=headers)
    assert code == 200, body
    return json.loads(body)


def stack(board, uri, headers=None):
    code, _, body = request(board, "POST", "/api/stack", json.dumps({"uri": uri}),
                            dict({"Content-Type": "application/json"}, **(headers or {})))
    return code, json.loads(body)


# -- what the engines say ------------------------------------------------------------------------------

def test_status_names_the_running_task_and_counts_tasks(pair, tmp_path):
    engine = srpy.PythonEngine(pair[0], forward_output=False)
    before = engine.call("status")["tasks"]
    with srpy.EngBox([pair[0]]) as box:
        assert list(box.map(twice, range(30))) == [2 * x for x in range(30)]
        assert box.submit(twice, 4).result(30) == 8
        assert wait_until(lambda: engine.call("status")["tasks"] >= before + 31, what="31 tasks counted")
        gate = str(tmp_path / "gate")
        held = box.submit(hold, gate)
        try:
            status = wait_until(lambda: (lambda s: s if s["task"] else None)(engine.call("status")),
                                what="the held task")
        finally:
            open(gate, "w").close()
        assert held.result(30) == "held"
    assert status["busy"] and status["current"] == "run_batch" and status["task"] == "hold"
    # the task's part of the stack: its own function and line first, no srpy or server frames
    first = status["task_stack"].splitlines()[0]
    assert "in hold" in first and "run_batch" not in status["task_stack"]
    assert os.path.join(ROOT, "srpy") not in status["task_stack"] and "Pyro5" not in status["task_stack"]
    assert "time.sleep(0.01)" in status["task_stack"]
    assert "in hold" in status["stack"] and "run_batch" in status["stack"]  # the whole stack, as before
    idle = engine.call("status")
    assert not idle["busy"] and idle["task"] == "" and idle["task_stack"] == ""
    engine.close()


# -- the JSON the page reads -------------------------------------------------------------------------

def test_state_lists_the_engines_busy_and_counting(pair, board, tmp_path):
    infos = {}
    for uri in pair:
        with srpy.PythonEngine(uri, forward_output=False) as engine:
            infos[uri] = engine.whoami()
    first = wait_until(lambda: (lambda s: s if s["totals"]["answering"] == 2 else None)(state(board)),
                       what="both engines answering")
    assert [view["uri"] for view in sorted(first["engines"], key=lambda v: v["uri"])] == sorted(pair)
    for view in first["engines"]:
        info = infos[view["uri"]]
        assert (view["host"], view["group"], view["name"], view["pid"]) == (
            info["Hostname"], info["Group"], info["Name"], info["PID"])
        assert view["cores"] >= 1 and view["memory_total"] > view["memory_available"] > 0 and view["rss"] > 0
        assert view["state"] in ("idle", "busy")
    with srpy.EngBox(pair) as box:
        running = RunningMap(box, tmp_path)
        try:
            busy = wait_until(lambda: (lambda s: s if all(v["state"] == "busy" and v["task"] == "nap"
                                                          for v in s["engines"]) else None)(state(board)),
                              what="both engines busy with nap")
            counted = busy["totals"]["tasks"]
            later = wait_until(lambda: (lambda s: s if s["totals"]["tasks"] > counted + 20 else None)(state(board)),
                               what="the task count rising")
            assert later["totals"]["tasks_per_second"] > 0 and later["totals"]["busy"] >= 1
            assert any(rate > 0 for rate in later["series"]["tasks_per_second"])
            assert len(later["series"]["time"]) == len(later["series"]["tasks_per_second"]) == len(later["series"]["busy"])
            assert all(v["running_for"] >= 0 and v["call"] == "run_batch"
                       for v in later["engines"] if v["state"] == "busy")
        finally:
            running.stop()


def test_a_busy_engine_shows_its_stack(pair, board, tmp_path):
    with srpy.EngBox([pair[0]]) as box:
        gate = str(tmp_path / "gate")
        held = box.submit(hold, gate)
        try:
            code, answer = wait_until(lambda: (lambda r: r if r[1].get("task") == "hold" else None)(
                stack(board, pair[0])), what="the stack of the held task")
        finally:
            open(gate, "w").close()
        assert held.result(30) == "held"
    assert code == 200 and answer["busy"] and answer["uri"] == pair[0] and answer["running_for"] >= 0
    assert "in hold" in answer["stack"] and "time.sleep(0.01)" in answer["stack"]
    idle = wait_until(lambda: (lambda r: r if not r[1]["busy"] else None)(stack(board, pair[0])), what="idle again")
    assert idle[0] == 200 and idle[1]["task"] == ""


def test_the_stack_is_asked_only_of_engines_it_lists(board):
    code, answer = stack(board, "PYRO:srpy.engine@127.0.0.1:1")
    assert code == 404 and "no engine" in answer["error"]
    for body, kind in (("not json", "application/json"), (json.dumps({"uri": 5}), "application/json"),
                       (json.dumps(["x"]), "application/json")):
        code, _, text = request(board, "POST", "/api/stack", body, {"Content-Type": kind})
        assert code == 400, text
    code, _, _ = request(board, "POST", "/api/stack", json.dumps({"uri": "x"}), {"Content-Type": "text/plain"})
    assert code == 415  # a form or a plain-text POST (what another site can send without asking) is refused
    code, _, _ = request(board, "POST", "/api/stack", "x" * 5000, {"Content-Type": "application/json"})
    assert code == 413
    assert request(board, "GET", "/static/../dashboard.py")[0] == 404
    assert request(board, "GET", "/static/nothing.js")[0] == 404


def test_the_peer_mesh_shows_who_knows_whom(start_launcher, monkeypatch):
    monkeypatch.setattr(monitor, "PEERS_EVERY", 0.2)  # the monitor asks for peers at each round
    launcher = start_launcher(["-n", "3"], count=3)
    served = dashboard.Dashboard(monitor.Monitor(monitor.fixed(launcher.uris)), port=0).start()
    try:
        seen = wait_until(lambda: (lambda s: s if s["totals"]["answering"] == 3 else None)(state(served)),
                          what="three engines answering")
        assert all(view["peers"] == [] for view in seen["engines"])
        with srpy.EngBox(launcher.uris) as box:
            box.connectPeers()
            meshed = wait_until(lambda: (lambda s: s if all(len(v["peers"]) == 2 for v in s["engines"]) else None)(
                state(served)), what="every engine listing its two peers")
        for view in meshed["engines"]:
            assert sorted(view["peers"]) == sorted(uri for uri in launcher.uris if uri != view["uri"])
    finally:
        served.close()


def test_an_engine_that_stops_is_down_and_one_that_comes_back_counts_again(start_launcher):
    launcher = start_launcher(["-n", "1"], count=1)
    silent = "PYRO:srpy.engine@127.0.0.1:1"
    watcher = monitor.Monitor(monitor.fixed([launcher.uris[0], silent]), interval=0.2, timeout=2.0)
    try:
        seen = wait_until(lambda: (lambda s: s if s["totals"]["answering"] == 1 else None)(watcher.poll()),
                          what="the live engine")
        views = {view["uri"]: view for view in seen["engines"]}
        assert views[silent]["state"] == "down" and views[silent]["reason"]
        assert views[launcher.uris[0]]["state"] == "idle"
        json.dumps(seen, allow_nan=False)  # plain data, as the page reads it
    finally:
        watcher.stop()


def test_engines_of_a_uri_file_are_found_as_it_changes(start_launcher, tmp_path, monkeypatch):
    monkeypatch.setattr(monitor, "FIND_EVERY", 0.1)
    launcher = start_launcher(["-n", "2"], count=2)
    uri_file = tmp_path / "uris.txt"
    uri_file.write_text("# engines\n%s\n" % launcher.uris[0])
    watcher = monitor.Monitor(monitor.from_file(str(uri_file)), timeout=2.0)
    try:
        assert [v["uri"] for v in watcher.poll()["engines"]] == [launcher.uris[0]]
        uri_file.write_text("\n".join(launcher.uris) + "\n")
        time.sleep(0.2)
        assert sorted(v["uri"] for v in watcher.poll()["engines"]) == sorted(launcher.uris)
        uri_file.unlink()  # gone for a moment (a launcher writing it anew): the engines known stay
        time.sleep(0.2)
        polled = watcher.poll()
        assert len(polled["engines"]) == 2 and "uris.txt" in polled["problem"]
    finally:
        watcher.stop()


# -- the secret ----------------------------------------------------------------------------------------

def test_with_a_login_the_page_wants_the_secret(start_launcher, caplog):
    secret = "dashboard-s3cret-1234"
    launcher = start_launcher(["-n", "1"], count=1, env={"SRPY_SECRET": secret})
    caplog.set_level(logging.DEBUG, logger="srpy")
    served = dashboard.Dashboard(monitor.Monitor(monitor.fixed(launcher.uris), secret), port=0,
                                 secret=secret, login=True).start()
    try:
        assert request(served, "GET", "/api/state")[0] == 401
        code, headers, _ = request(served, "GET", "/")
        assert code == 303 and headers["Location"] == "/login"
        assert request(served, "GET", "/static/dashboard.js")[0] == 303
        assert stack(served, launcher.uris[0])[0] == 401
        code, _, page = request(served, "GET", "/login")
        assert code == 200 and b'name="secret"' in page and b"data-failed hidden" in page
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        code, headers, _ = request(served, "POST", "/login", "secret=wrong", form)
        assert code == 303 and headers["Location"] == "/login?failed=1" and "Set-Cookie" not in headers
        assert b"data-failed hidden" not in request(served, "GET", "/login?failed=1")[2]
        code, headers, _ = request(served, "POST", "/login", urllib.parse.urlencode({"secret": secret}), form)
        assert code == 303 and headers["Location"] == "/"
        cookie = headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and secret not in cookie
        session = {"Cookie": cookie.split(";")[0]}
        forged = {"Cookie": "%s=%s" % (dashboard.COOKIE, "0" * 64)}
        assert request(served, "GET", "/api/state", headers=forged)[0] == 401
        seen = wait_until(lambda: (lambda s: s if s["totals"]["answering"] == 1 else None)(state(served, session)),
                          what="the engine, through its secret")
        assert seen["engines"][0]["uri"] == launcher.uris[0]
        assert request(served, "GET", "/", headers=session)[0] == 200
        code, answer = stack(served, launcher.uris[0], session)
        assert code == 200 and answer["busy"] is False
    finally:
        served.close()
    assert caplog.records and not any(secret in record.getMessage() for record in caplog.records)


def test_a_monitor_without_the_secret_says_so(start_launcher):
    launcher = start_launcher(["-n", "1"], count=1, env={"SRPY_SECRET": "the-engines-own"})
    watcher = monitor.Monitor(monitor.fixed(launcher.uris), timeout=2.0)
    try:
        view = watcher.poll()["engines"][0]
        assert view["state"] == "needs secret" and view["reason"]
    finally:
        watcher.stop()


def test_beyond_loopback_it_asks_for_the_secret_or_refuses():
    assert dashboard.login_needed("0.0.0.0", "s3cret") and dashboard.login_needed("192.0.2.1", "s3cret")
    assert not dashboard.login_needed("127.0.0.1", "s3cret") and not dashboard.login_needed("localhost", None)
    with pytest.raises(SRPyError, match="without a secret"):
        dashboard.Dashboard(monitor.Monitor(monitor.fixed([])), host="0.0.0.0", port=0)
    with pytest.raises(SRPyError, match="--login needs"):
        dashboard.login_needed("127.0.0.1", None, login=True)
    assert dashboard.login_needed("0.0.0.0", None, insecure=True) is False


def test_requests_from_elsewhere_are_refused(board, pair):
    code, _, _ = request(board, "GET", "/api/state", headers={"Host": "attacker.example:80"})
    assert code == 421  # a page of another site reaching loopback through DNS rebinding
    host, port = board.address
    code, _, _ = request(board, "POST", "/api/stack", json.dumps({"uri": pair[0]}),
                         {"Content-Type": "application/json", "Origin": "http://attacker.example"})
    assert code == 403
    code, _, _ = request(board, "POST", "/api/stack", json.dumps({"uri": pair[0]}),
                         {"Content-Type": "application/json", "Origin": "http://%s:%d" % (host, port)})
    assert code == 200
    # a refused POST leaves nothing behind on a kept-alive connection: the next request is read as one
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("POST", "/login", "secret=x", {"Origin": "http://attacker.example"})
        refused = conn.getresponse()
        assert refused.status == 403 and refused.getheader("Connection") == "close"
        refused.read()
        conn.request("GET", "/api/state")  # http.client opens a new connection after a close
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    code, headers, _ = request(board, "GET", "/")
    assert code == 200 and "default-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert request(board, "GET", "/api/state")[1]["Cache-Control"] == "no-store"


# -- the commands ----------------------------------------------------------------------------------------

def serve(args, env=None):
    """C{srpyapp dashboard ARGS}, started; (process, the page's URL)."""
    process = subprocess.Popen([sys.executable, SRPYAPP, "dashboard"] + args, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, cwd=ROOT,
                               env=dict(os.environ, **(env or {})), preexec_fn=die_with_parent)
    line = process.stdout.readline()
    match = re.match(r"srpy dashboard: (http://\S+)", line)
    if not match:
        process.kill()
        raise AssertionError("no URL printed: %r %s" % (line, process.communicate()[1]))
    return process, match.group(1)


def fetch(url, path):
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_srpyapp_dashboard_serves_the_engines_of_a_uri_file(start_launcher, tmp_path):
    uri_file = tmp_path / "uris.txt"
    launcher = start_launcher(["-n", "2", "-u", str(uri_file)], count=2)
    process, url = serve(["-u", str(uri_file), "--port", "0", "--interval", "0.5"])
    try:
        def engines():
            code, body = fetch(url, "/api/state")
            seen = json.loads(body)
            return seen if code == 200 and seen["totals"]["answering"] == 2 else None
        seen = wait_until(engines, what="the engines of the URI file")
        assert sorted(view["uri"] for view in seen["engines"]) == sorted(launcher.uris)
        code, page = fetch(url, "/")
        assert code == 200 and b"/static/uPlot.iife.min.js" in page
        code, chart = fetch(url, "/static/uPlot.iife.min.js")
        assert code == 200 and b"uPlot" in chart[:200]
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err


def test_srpyapp_dashboard_refuses_what_would_not_be_safe(tmp_path):
    for args, wanted in ((["--host", "0.0.0.0", "--port", "0", "PYRO:srpy.engine@127.0.0.1:1"], "without a secret"),
                         (["--login", "--port", "0", "PYRO:srpy.engine@127.0.0.1:1"], "--login needs"),
                         (["-u", str(tmp_path / "none.txt")], "no such file")):
        done = subprocess.run([sys.executable, SRPYAPP, "dashboard"] + args, capture_output=True, text=True,
                              cwd=ROOT, timeout=60, env=dict(os.environ, SRPY_SECRET=""))
        assert done.returncode == 1 and wanted in done.stderr and len(done.stderr.strip().splitlines()) == 1, done
    bad = subprocess.run([sys.executable, SRPYAPP, "dashboard", "--port", "70000"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert bad.returncode == 2 and "not a port" in bad.stderr


def test_the_launcher_serves_the_dashboard_of_its_engines(start_launcher):
    launcher = start_launcher(["-n", "2", "--dashboard", "0"], count=2)
    lines = [line for line in launcher.banner if line.startswith("dashboard: ")]
    assert lines, launcher.banner
    url = lines[0].split()[1]
    assert url.startswith("http://127.0.0.1:")

    def engines():
        code, body = fetch(url, "/api/state")
        seen = json.loads(body)
        return seen if code == 200 and seen["totals"]["answering"] == 2 else None
    seen = wait_until(engines, what="the launcher's engines")
    assert sorted(view["uri"] for view in seen["engines"]) == sorted(launcher.uris)
    code, err = launcher.shutdown()
    assert code == 0, err
    single = start_launcher(["--dashboard", "0"])  # basic mode: its one engine, supervised as with -n 1
    url = [line for line in single.banner if line.startswith("dashboard: ")][0].split()[1]
    url_engines = wait_until(lambda: (lambda s: s if s["totals"]["answering"] == 1 else None)(
        json.loads(fetch(url, "/api/state")[1])), what="the basic launcher's engine")
    assert [view["uri"] for view in url_engines["engines"]] == single.uris
    code, err = single.shutdown()
    assert code == 0, err


def test_the_launchers_dashboard_options_are_checked():
    done = subprocess.run([sys.executable, SRPYAPP, "--dashboard-host", "127.0.0.1"], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 2 and "--dashboard-host needs --dashboard" in done.stderr
    done = subprocess.run([sys.executable, SRPYAPP, "-n", "1", "--dashboard", "0", "--dashboard-host", "0.0.0.0"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60, env=dict(os.environ, SRPY_SECRET=""))
    assert done.returncode == 1 and "without a secret" in done.stderr and "PYRO:" not in done.stdout


# -- the page, in a real browser -----------------------------------------------------------------------

def browser(tmp_path):
    """A headless Chromium under chromedriver (Debian's), with a profile of its own."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1400,1000", "--user-data-dir=%s" % (tmp_path / "chromium")):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console, for its errors
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; "
                           ".ci/run installs them)")
def test_the_page_in_a_browser_shows_engines_working(start_launcher, tmp_path, monkeypatch):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    monkeypatch.setattr(monitor, "PEERS_EVERY", 1.0)
    launcher = start_launcher(["-n", "3"], count=3)
    served = dashboard.Dashboard(monitor.Monitor(monitor.fixed(launcher.uris)), port=0).start()
    driver = browser(tmp_path)
    box = srpy.EngBox(launcher.uris)
    running = None
    try:
        box.connectPeers()
        running = RunningMap(box, tmp_path)
        driver.get(served.url)
        # the page builds its rows anew at every refresh: an element found just before one is stale,
        # and the condition is asked again on the new rows
        wait = WebDriverWait(driver, 60, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,))

        def rows():
            return driver.find_elements(By.CSS_SELECTOR, "#engines tbody tr")

        wait.until(lambda _: len(rows()) == 3)
        shown = wait.until(lambda _: sorted(row.get_attribute("data-uri") for row in rows()))
        assert shown == sorted(launcher.uris)
        busy = wait.until(lambda _: [row for row in rows() if row.get_attribute("data-state") == "busy"
                                     and "nap()" in row.find_element(By.CSS_SELECTOR, "td.task").text])

        def total():
            text = driver.find_element(By.ID, "total-tasks").text
            return int(text) if text.isdigit() else None

        first = wait.until(lambda _: total())
        wait.until(lambda _: (total() or 0) > first + 20)  # the count rises while the map runs
        assert driver.find_element(By.ID, "total-engines").text == "3"
        wait.until(lambda _: "3 peer links" in driver.find_element(By.ID, "mesh-note").text)
        assert len(driver.find_elements(By.CSS_SELECTOR, "#mesh line")) == 3
        assert driver.find_elements(By.CSS_SELECTOR, "#chart canvas"), "uPlot drew no chart"
        # a click on a busy engine shows the stack of the task it runs
        def click_busy():
            busy = [row for row in rows() if row.get_attribute("data-state") == "busy"]
            if busy:
                busy[0].click()
            return bool(busy)

        wait.until(lambda _: click_busy())
        wait.until(lambda _: "in nap" in driver.find_element(By.ID, "stack-text").text)
        assert "nap()" in driver.find_element(By.ID, "stack-title").text
        keep = os.environ.get("SRPY_DASHBOARD_SCREENSHOT") == "1"
        points = 40 if keep else 8  # a chart worth a look in the documentation
        WebDriverWait(driver, 120, poll_frequency=0.5).until(
            lambda _: len(served.monitor.snapshot()["series"]["time"]) >= points)
        time.sleep(1.5)
        picture = tmp_path / "dashboard.png"
        driver.save_screenshot(str(picture))
        assert picture.stat().st_size > 10000
        if keep:
            shutil.copyfile(str(picture), os.path.join(ROOT, "doc", "dashboard.png"))
        logs = [entry for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]
        assert not logs, logs  # no script error, no refused resource (the CSP holds with the page's own files)
    finally:
        if running is not None:
            running.stop()
        box.close()
        driver.quit()
        served.close()


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; "
                           ".ci/run installs them)")
def test_the_page_asks_a_browser_for_the_secret(start_launcher, tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    secret = "browser-s3cret-5678"
    launcher = start_launcher(["-n", "1"], count=1, env={"SRPY_SECRET": secret})
    served = dashboard.Dashboard(monitor.Monitor(monitor.fixed(launcher.uris), secret), port=0,
                                 secret=secret, login=True).start()
    driver = browser(tmp_path)
    try:
        wait = WebDriverWait(driver, 60, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,))
        driver.get(served.url)
        wait.until(lambda _: driver.current_url.endswith("/login"))
        driver.find_element(By.ID, "secret").send_keys("not the secret")
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(lambda _: driver.current_url.endswith("/login?failed=1"))
        assert driver.find_element(By.CSS_SELECTOR, "[data-failed]").is_displayed()
        driver.find_element(By.ID, "secret").send_keys(secret)
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        # the session cookie (SameSite=Strict, HttpOnly) carries the page from the form to its JSON
        wait.until(lambda _: [row for row in driver.find_elements(By.CSS_SELECTOR, "#engines tbody tr")
                              if row.get_attribute("data-state") == "idle"])
        assert secret not in driver.current_url
        assert driver.execute_script("return document.cookie") == ""  # HttpOnly: no script reads it
    finally:
        driver.quit()
        served.close()
