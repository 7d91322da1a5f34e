"""The chat's web page in a real headless Chromium at phone (375x812) and desktop (1280x800) sizes.

The geometry is measured in the page (getBoundingClientRect, computed styles), and every test saves
screenshots (tmp_path, and artifacts/ for people to look at).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.apps.chat.helpers import LineClient, chat_node, http_get
from tests.browser import headless_chromium

pytestmark = [pytest.mark.interop, pytest.mark.slow, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[3]
PHONE = (375, 812)
DESKTOP = (1280, 800)
LONG_NICK = "Maximilian_Oberhausen-x"  # 23 characters: a nick the old 80 px column broke mid-word


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with headless_chromium(DESKTOP, "--force-prefers-reduced-motion") as driver:
        yield driver


def _viewport(driver: Any, size: tuple[int, int], *, mobile: bool) -> None:
    """Emulate the screen exactly (the window size alone leaves the headless viewport to chance)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": mobile})


def _wait(driver: Any, script: str, what: str, timeout: float = 15.0) -> Any:
    """Wait until the JS expression ``script`` is truthy (the page's own state; no sleeps)."""
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(
            lambda d: d.execute_script("return " + script))
    except Exception as exc:
        status = driver.execute_script("return document.getElementById('status').textContent")
        raise AssertionError(f"{what}: {script} never true; status {status!r}") from exc


def _sign_in(driver: Any, url: str, nick: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url)
    width = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssLayoutViewport"]["clientWidth"]
    assert width in (PHONE[0], DESKTOP[0]), width  # the emulated screen, honoured by the page's viewport
    field = driver.find_element(By.ID, "nick")
    field.clear()
    field.send_keys(nick)
    driver.find_element(By.ID, "connect").click()


def _type(driver: Any, text: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "text").send_keys(text)
    driver.find_element(By.ID, "send-button").click()


def _shot(driver: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 1000
    artifacts = REPO / "artifacts"
    artifacts.mkdir(exist_ok=True)
    shutil.copy(path, artifacts / name)
    return path


RECT = "(s => { const r = document.querySelector(s).getBoundingClientRect(); " \
       "return {left: r.left, right: r.right, width: r.width, height: r.height, top: r.top, " \
       "visible: getComputedStyle(document.querySelector(s)).visibility === 'visible'}; })"
# Every nick shown: not wrapping, and drawn on one line (an inline box broken over lines has several rects).
NICKS_WHOLE = """return [...document.querySelectorAll('#log .nick, #members li:not(.count), #rooms button')].map(e => ({
    text: e.textContent, ws: getComputedStyle(e).whiteSpace, rects: e.getClientRects().length,
    height: e.getBoundingClientRect().height, line: parseFloat(getComputedStyle(e).lineHeight) || 20}))"""


def _check_nicks_whole(driver: Any) -> list[dict[str, Any]]:
    nicks = driver.execute_script(NICKS_WHOLE)
    assert nicks, "no nick on the page"
    for n in nicks:
        assert n["ws"] in ("nowrap", "pre"), n
        assert n["rects"] == 1 and n["height"] < 1.8 * n["line"], f"broken over lines: {n}"
    return list(nicks)


def _populated_room(port: int) -> LineClient:
    """A member with the longest nick, a topic and a message, so the page has something to lay out."""
    long = LineClient(port, LONG_NICK)
    long.send("/topic a room for testing the page on small screens")
    long.expect("TOPIC")
    long.send("hello from a long nick; a fairly long message too, to see how the lines wrap on a phone")
    long.expect("MSG")
    return long


def test_phone_messages_get_the_width_and_the_menu_opens_rooms_and_members(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    with chat_node(http_port=0) as node, _populated_room(node.tcp_port) as other:
        _viewport(browser, PHONE, mobile=True)
        _sign_in(browser, f"http://127.0.0.1:{node.http_port}/", "phone")
        _wait(browser, "document.getElementById('status').textContent === 'online as phone'", "signed in")
        _wait(browser, f"document.getElementById('log').textContent.includes('{LONG_NICK}:')", "history shown")
        other.expect("JOIN #lobby phone")
        log = browser.execute_script(f"return {RECT}('#log')")
        assert log["width"] >= 300, log  # was ~80 px: two sidebars beside it
        assert browser.execute_script("return document.documentElement.scrollWidth") <= PHONE[0]
        for side in ("#rooms", "#members-panel"):  # collapsed: off screen and invisible
            r = browser.execute_script(f"return {RECT}('{side}')")
            assert not r["visible"] and (r["right"] <= 0 or r["left"] >= PHONE[0]), (side, r)
        _check_nicks_whole(browser)
        assert browser.find_element(By.ID, "menu-room").text == "#lobby"
        _shot(browser, tmp_path, "chat-phone.png")

        browser.find_element(By.ID, "menu-members").click()  # the members drawer
        _wait(browser, f"{RECT}('#members-panel').visible && {RECT}('#members-panel').right <= {PHONE[0]} + 0.5",
              "members drawer open")
        assert browser.find_element(By.ID, "menu-members").get_attribute("aria-expanded") == "true"
        members = browser.find_element(By.ID, "members").text.split("\n")
        assert sorted(members) == sorted([LONG_NICK, "phone"])
        _check_nicks_whole(browser)
        _shot(browser, tmp_path, "chat-phone-members.png")
        browser.find_element(By.XPATH, f"//ul[@id='members']/li[text()='{LONG_NICK}']").click()  # closes, /msg
        _wait(browser, f"!{RECT}('#members-panel').visible", "members drawer closed")
        assert browser.find_element(By.ID, "text").get_attribute("value") == f"/msg {LONG_NICK} "

        browser.find_element(By.ID, "text").clear()
        _type(browser, "/join #second")
        _wait(browser, "window.socklabChat.current === '#second'", "/join switched")
        # The topic comes with each join (the server's default room, then the page's own /join, both
        # answered before this later /join): shown once.
        assert browser.execute_script("return window.socklabChat.rooms.get('#lobby').lines"
                                      ".filter(e => e.text.startsWith('topic: a room')).length") == 1
        browser.find_element(By.ID, "menu-rooms").click()  # the rooms drawer
        _wait(browser, f"{RECT}('#rooms').visible && {RECT}('#rooms').left >= -0.5", "rooms drawer open")
        rooms = [b.text for b in browser.find_elements(By.CSS_SELECTOR, "#rooms button")]
        assert rooms == ["#lobby", "#second"]
        _shot(browser, tmp_path, "chat-phone-rooms.png")
        browser.find_element(By.XPATH, "//nav[@id='rooms']/button[text()='#lobby']").click()
        _wait(browser, f"window.socklabChat.current === '#lobby' && !{RECT}('#rooms').visible", "back in #lobby")


def test_desktop_keeps_both_sidebars(browser: Any, tmp_path: Path) -> None:
    with chat_node(http_port=0) as node, _populated_room(node.tcp_port):
        _viewport(browser, DESKTOP, mobile=False)
        _sign_in(browser, f"http://127.0.0.1:{node.http_port}/", "desk")
        _wait(browser, "document.getElementById('status').textContent === 'online as desk'", "signed in")
        _wait(browser, f"document.getElementById('members').textContent.includes('{LONG_NICK}')", "members shown")
        nav = browser.execute_script(f"return {RECT}('#rooms')")
        aside = browser.execute_script(f"return {RECT}('#members-panel')")
        log = browser.execute_script(f"return {RECT}('#log')")
        # The layout of before: rooms 9em on the left, members 12em on the right, the log between.
        assert nav["visible"] and nav["left"] == 0 and abs(nav["width"] - 9 * 14) < 1, nav
        assert aside["visible"] and abs(aside["right"] - DESKTOP[0]) < 1 and abs(aside["width"] - 12 * 14) < 1
        assert abs(log["left"] - nav["right"]) < 1 and abs(log["right"] - aside["left"]) < 1
        assert browser.execute_script(
            "return [...document.querySelectorAll('.menu')].every(b => getComputedStyle(b).display === 'none')")
        _check_nicks_whole(browser)
        _shot(browser, tmp_path, "chat-desktop.png")


def test_refused_nick_shows_the_reason_and_not_signed_in(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    with chat_node(http_port=0) as node, LineClient(node.tcp_port, "taken") as taken:
        _viewport(browser, PHONE, mobile=True)
        url = f"http://127.0.0.1:{node.http_port}/"
        _sign_in(browser, url, "bad nick!")
        _wait(browser, "document.getElementById('status').textContent === 'not signed in'", "refusal")
        status = browser.find_element(By.ID, "status")
        assert "online" not in status.text
        assert status.value_of_css_property("background-color") == "rgba(230, 57, 70, 1)"  # red, not green
        error = browser.find_element(By.ID, "login-error")
        assert error.is_displayed() and "400 usage: /nick NAME" in error.text  # the server's reason
        assert error.value_of_css_property("color") == "rgba(155, 28, 28, 1)"
        assert not browser.find_element(By.ID, "text").is_enabled()  # nothing to send before a nick
        _shot(browser, tmp_path, "chat-phone-refused.png")

        field = browser.find_element(By.ID, "nick")  # a nick someone has: refused with 409
        field.clear()
        field.send_keys("Taken")
        browser.find_element(By.ID, "connect").click()
        _wait(browser, "document.getElementById('login-error').textContent.includes('409')", "409")
        assert status.text == "not signed in"
        field.clear()
        field.send_keys("good_nick")
        browser.find_element(By.ID, "connect").click()
        _wait(browser, "document.getElementById('status').textContent === 'online as good_nick'", "accepted")
        assert status.value_of_css_property("background-color") == "rgba(42, 157, 143, 1)"
        assert not error.is_displayed() and browser.find_element(By.ID, "text").is_enabled()
        taken.expect("JOIN #lobby good_nick")


def test_typed_join_switches_room_and_server_text_stays_text(browser: Any, tmp_path: Path) -> None:
    with chat_node(http_port=0) as node, LineClient(node.tcp_port, "mallory") as mallory:
        _viewport(browser, DESKTOP, mobile=False)
        _sign_in(browser, f"http://127.0.0.1:{node.http_port}/", "web")
        _wait(browser, "document.getElementById('status').textContent === 'online as web'", "signed in")
        mallory.expect("JOIN #lobby web")
        _type(browser, "/join #Side")  # room names are case-insensitive: the server says #side
        _wait(browser, "window.socklabChat.current === '#side'", "switched to #side")
        _wait(browser, "document.getElementById('room-name').textContent === '#side'", "members of #side")
        assert browser.execute_script("return document.querySelector('#rooms button.current').textContent") == "#side"
        mallory.send("/join #side")
        mallory.expect("SYNC #side")
        payload = '<img src=x onerror="window.pwned=1"><b>bold</b> & <script>window.pwned=2</script>'
        mallory.send(payload)
        mallory.send(f"/topic <i>{payload}</i>")
        _wait(browser, "document.getElementById('log').textContent.includes('<b>bold</b>')", "markup as text")
        _wait(browser, "document.getElementById('topic').textContent.includes('<i>')", "topic as text")
        assert browser.execute_script(
            "return document.querySelectorAll('#log img, #log b, #log i, #log script, #topic *').length") == 0
        assert browser.execute_script("return window.pwned") is None
        _shot(browser, tmp_path, "chat-desktop-join.png")
        _type(browser, "/join #lobby")  # a room already joined: switches back at once
        _wait(browser, "window.socklabChat.current === '#lobby'", "switched back")
        _wait(browser, "document.getElementById('members').textContent.includes('mallory')", "lobby members")


def test_favicon_is_served() -> None:
    with chat_node(http_port=0) as node:
        head, _, body = http_get(node.http_port, "/favicon.ico").partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head  # was 404
        assert b"content-type: image/x-icon" in head.lower()
        assert body[:4] == b"\0\0\1\0" and b"\x89PNG" in body  # an ICO holding a PNG


def test_favicon_decodes_in_the_browser_and_the_page_links_an_icon(browser: Any) -> None:
    with chat_node(http_port=0) as node:
        browser.get(f"http://127.0.0.1:{node.http_port}/")
        assert browser.execute_script("return document.querySelector('link[rel=icon]').href").startswith(
            "data:image/svg+xml,")
        size = browser.execute_async_script("""const done = arguments[0], img = new Image();
            img.onload = () => done([img.naturalWidth, img.naturalHeight]); img.onerror = () => done(null);
            img.src = '/favicon.ico';""")
        assert size == [16, 16]
        inline = browser.execute_async_script("""const done = arguments[0], img = new Image();
            img.onload = () => done(img.naturalWidth > 0); img.onerror = () => done(false);
            img.src = document.querySelector('link[rel=icon]').href;""")
        assert inline

