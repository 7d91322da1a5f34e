"""The web page in a crowded room: the server's PRESENCE count instead of JOIN/PART/WHO (headless Chromium)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.apps.chat.helpers import LineClient, chat_node
from tests.apps.chat.test_web_page import PHONE, RECT, _shot, _sign_in, _viewport, _wait, browser

pytestmark = [pytest.mark.interop, pytest.mark.slow, pytest.mark.timeout(120)]
__all__ = ["browser"]  # the module-scoped fixture, shared


def test_crowded_room_shows_the_count_and_lists_names_on_demand(browser: Any, tmp_path: Path) -> None:
    """Past --presence-names members the server sends PRESENCE (a count) instead of JOIN/PART/WHO."""
    from selenium.webdriver.common.by import By

    with chat_node(http_port=0, presence_names=2, presence_interval=0.05) as node, \
            LineClient(node.tcp_port, "amy") as amy, LineClient(node.tcp_port, "ben") as ben, \
            LineClient(node.tcp_port, "cyd") as cyd:
        _viewport(browser, PHONE, mobile=True)
        _sign_in(browser, f"http://127.0.0.1:{node.http_port}/", "web")
        _wait(browser, "document.getElementById('member-count').textContent === '4'", "the count of a crowded room")
        _wait(browser, "document.getElementById('members').textContent === '4 members - list them'", "no names")
        amy.expect("PRESENCE #lobby 4 1 0")
        with LineClient(node.tcp_port, "dee") as dee:
            _wait(browser, "document.getElementById('log').textContent.includes('1 joined (dee)')", "PRESENCE line")
            _wait(browser, "document.getElementById('member-count').textContent === '5'", "count 5")
            browser.find_element(By.ID, "menu-members").click()
            browser.find_element(By.CSS_SELECTOR, "#members li.count").click()  # list them: /who #lobby
            _wait(browser, "document.querySelectorAll('#members li:not(.count)').length === 5", "names on demand")
            assert browser.execute_script("return window.socklabChat.rooms.get('#lobby').crowded")
            # The count alone came twice (the server's default-room join, then the page's own /join,
            # answered before this /who): logged once.
            assert browser.execute_script("return window.socklabChat.rooms.get('#lobby').lines"
                                          ".filter(e => e.text.includes('are counted, not named')).length") == 1
            browser.find_element(By.ID, "menu-members").click()
            _shot(browser, tmp_path, "chat-phone-crowded.png")
            from selenium.webdriver.common.action_chains import ActionChains

            backdrop = browser.find_element(By.ID, "backdrop")  # tapping beside the drawer closes it
            ActionChains(browser).move_to_element_with_offset(backdrop, -PHONE[0] // 2 + 20, 0).click().perform()
            _wait(browser, f"!{RECT}('#members-panel').visible", "drawer closed by the backdrop")
            dee.send("/quit")
        cyd.send("/nick cy2")  # told in the next PRESENCE sentence (0 joined, 0 left)
        _wait(browser, "document.getElementById('log').textContent.includes('1 renamed (cyd is now cy2)')", "rename")
        cyd.send("/part")
        ben.send("/part")
        # Back to 2 members: the server sends the list afresh and per-nick lines again.
        _wait(browser, "!window.socklabChat.rooms.get('#lobby').crowded", "small again")
        _wait(browser, "document.getElementById('members').textContent === 'amywebb'.replace('webb', 'web')",
              "the fresh list")
        assert browser.find_element(By.ID, "member-count").text == "2"
        del amy
