"""
The chat page in a real headless Chromium (Debian's chromium + chromedriver, no downloads):
load it, enter the API key, pick tags, set sampling controls, send messages, watch the streamed
reply appear, keep and clear the history. The reply shown must be the API's own answer.
"""
import json
import os
import shutil
import tempfile

import httpx
import pytest

from test_serve import Server

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
KEY = "page-key-42"
pytestmark = [pytest.mark.slow,  # a real browser and server: tens of seconds
              pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)),
                                 reason="needs Debian's chromium and chromium-driver (setup.sh installs them)")]


@pytest.fixture(scope="module")
def page_server(tiny_out_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("page_server") / "server.log"
    s = Server([f"--out_dir={tiny_out_dir}", f"--api_key={KEY}", "--max_tokens=40"], str(log))
    try:
        yield s.wait()
    finally:
        s.stop()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    profile = tempfile.mkdtemp(prefix="nanophi-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 "--disable-dev-shm-usage", "--window-size=1200,800", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# records every fetch the page makes, and every text the newest reply bubble shows while streaming
SPY = """
window.__requests = [];
const realFetch = window.fetch;
window.fetch = (url, opts) => { window.__requests.push([url, opts && opts.body]); return realFetch(url, opts); };
window.__states = [];
new MutationObserver(() => {
  const last = [...document.querySelectorAll('#history .msg.assistant .text')].pop();
  if (last && last.textContent && window.__states[window.__states.length - 1] !== last.textContent)
    window.__states.push(last.textContent);
}).observe(document.getElementById('history'), {childList: true, subtree: true, characterData: true});
"""


def set_value(driver, elem_id, value):
    """Set a control as a user would (input event fired), also for range sliders."""
    driver.execute_script("const e = document.getElementById(arguments[0]); e.value = arguments[1];"
                          "e.dispatchEvent(new Event('input')); e.dispatchEvent(new Event('change'));",
                          elem_id, str(value))


def send(driver, text):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    n = len(driver.find_elements(By.CSS_SELECTOR, "#history .msg .meta, #history .msg.error"))
    box = driver.find_element(By.ID, "input")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history .msg .meta, #history .msg.error")) > n)
    return driver.find_elements(By.CSS_SELECTOR, "#history .msg")[-1]


def wait(driver, cond, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout).until(cond)


def last_request(driver):
    url, body = driver.execute_script("return window.__requests[window.__requests.length - 1]")
    return url, json.loads(body)


def test_chat_page_in_a_real_browser(page_server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    d = browser
    d.get(page_server.url + "/")
    # the server has a key: /health tells the page only that, until the key is entered
    wait(d, lambda d: "API key" in d.find_element(By.ID, "status").text)
    d.execute_script(SPY)
    assert d.title == "NanoPhi"
    tags = [o.text for o in Select(d.find_element(By.ID, "tag")).options]
    assert tags == ["Chat", "Textbook", "Code", "Math", "Logic", "Roleplay", "Excerpt"]
    assert d.find_element(By.ID, "key-row").is_displayed()  # the server has a key: the page asks for it

    # without the key: a clear error on the page, and no reply
    err = send(d, "Hello there")
    assert "error" in err.get_attribute("class") and "API key" in err.text

    # with the key and greedy settings: the reply is exactly the API's answer
    d.find_element(By.ID, "api_key").send_keys(KEY)
    set_value(d, "temperature", 0)
    wait(d, lambda d: "nanophi" in d.find_element(By.ID, "status").text)  # with the key: the model's status
    set_value(d, "repetition_penalty", 1.1)
    top_k = d.find_element(By.ID, "top_k")
    top_k.clear()
    top_k.send_keys("5")
    set_value(d, "max_tokens", 12)
    d.find_element(By.ID, "system").send_keys("Be kind.")
    reply = send(d, "Hello there")
    url, body = last_request(d)
    assert url == "/v1/chat/completions" and body["stream"] is True and body["tag"] == "Chat"
    assert (body["temperature"], body["top_k"], body["max_tokens"], body["repetition_penalty"]) == (0, 5, 12, 1.1)
    assert body["messages"] == [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hello there"}]
    api = httpx.post(page_server.url + "/v1/chat/completions", json={**body, "stream": False},
                     headers={"Authorization": f"Bearer {KEY}"}, timeout=60).json()
    expected = api["choices"][0]["message"]["content"]
    assert reply.find_element(By.CSS_SELECTOR, ".text").text == expected.strip()
    assert "finish: " + api["choices"][0]["finish_reason"] in reply.find_element(By.CSS_SELECTOR, ".meta").text

    # the next chat turn carries the history, which the page shows
    send(d, "Tell me more")
    _, body = last_request(d)
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
    assert body["messages"][2]["content"] == expected
    assert len(d.find_elements(By.CSS_SELECTOR, "#history .msg.user")) == 3  # incl. the one refused above

    # another tag: a one-shot tagged completion, streamed in pieces
    Select(d.find_element(By.ID, "tag")).select_by_visible_text("Textbook")
    assert not d.find_element(By.ID, "system-row").is_displayed()
    set_value(d, "max_tokens", 40)
    d.execute_script("window.__states = [];")
    reply = send(d, "Photosynthesis is")
    url, body = last_request(d)
    assert url == "/v1/completions" and body["tag"] == "Textbook" and body["prompt"] == "Photosynthesis is"
    text = reply.find_element(By.CSS_SELECTOR, ".text").text
    states = d.execute_script("return window.__states")
    assert len(states) >= 2 and states[-1].strip() == text.strip(), states  # it grew while streaming
    assert all(states[-1].startswith(s) for s in states)
    d.save_screenshot(str(tmp_path / "page.png"))
    assert os.path.getsize(tmp_path / "page.png") > 10_000
    if os.environ.get("NANOPHI_SCREENSHOT"):
        shutil.copy(tmp_path / "page.png", os.environ["NANOPHI_SCREENSHOT"])

    # clear: history gone, the next chat starts fresh
    d.find_element(By.ID, "clear").click()
    assert d.find_elements(By.CSS_SELECTOR, "#history .msg") == []
    Select(d.find_element(By.ID, "tag")).select_by_visible_text("Chat")
    send(d, "New topic")
    _, body = last_request(d)
    assert [m["role"] for m in body["messages"]] == ["system", "user"]


def in_view(driver, elem_id):
    """The element is displayed and wholly inside the window (no scrolling needed to see it)."""
    return driver.execute_script(
        "const r = document.getElementById(arguments[0]).getBoundingClientRect();"
        "return r.height > 0 && r.top >= 0 && r.bottom <= window.innerHeight && r.right <= window.innerWidth;",
        elem_id)


def test_page_on_a_390px_phone_screen(page_server, browser):
    from selenium.webdriver.common.by import By
    d = browser
    d.set_window_size(390, 844)
    try:
        d.get(page_server.url + "/")
        wait(d, lambda d: "API key" in d.find_element(By.ID, "status").text)
        assert d.execute_script("return window.innerWidth") <= 400
        # settings start folded, one tap away; the input box is on screen either way
        assert not d.find_element(By.ID, "temperature").is_displayed()
        assert in_view(d, "input") and in_view(d, "send")
        d.find_element(By.CSS_SELECTOR, "#settings-panel > summary").click()
        assert d.find_element(By.ID, "temperature").is_displayed()
        assert in_view(d, "input")
        d.find_element(By.ID, "api_key").send_keys(KEY)
        set_value(d, "max_tokens", 30)
        set_value(d, "temperature", 0)
        d.find_element(By.CSS_SELECTOR, "#settings-panel > summary").click()  # fold them again
        for i in range(8):  # a conversation longer than the screen
            send(d, f"Message number {i} with a few words in it")
        assert d.execute_script("const h = document.getElementById('history'); return h.scrollHeight > h.clientHeight")
        assert in_view(d, "input") and in_view(d, "send")
        assert d.execute_script("return document.documentElement.scrollWidth") <= 390  # no sideways scrolling
    finally:
        d.set_window_size(1200, 800)
