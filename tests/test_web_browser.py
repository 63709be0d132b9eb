"""The web door in a real browser: headless Chromium (Debian's) loads the page, and its
person chats with a telnet user through the same server process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.clients import RawClient
from tests.procs import ServerProcess
from tests.tmux import require

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CYRILLIC = "Привет, мир — ёжик съел 100 щей"
TIMEOUT = 10.0


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    process = ServerProcess("--store=memory://", "--flood-rate=0", "--web-port=0")
    try:
        yield process
    finally:
        process.kill()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    require(CHROMIUM, CHROMEDRIVER)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-extensions",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1000,700",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def page_text(driver: object) -> str:
    """What the terminal shows, as screen-reader mode puts it in the DOM."""
    return str(
        driver.execute_script(  # type: ignore[attr-defined]
            "const tree = document.querySelector('.xterm-accessibility-tree');return tree ? tree.textContent : '';"
        )
    )


def status_text(driver: object, state: str) -> str:
    status = driver.find_element("id", "status")  # type: ignore[attr-defined]
    return str(status.text) if status.get_attribute("data-state") == state else ""


def send_from_touch_field(driver: object, text: str) -> None:
    from selenium.webdriver.common.keys import Keys

    driver.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": True, "maxTouchPoints": 5})  # type: ignore[attr-defined]
    field = driver.find_element("id", "line-input")  # type: ignore[attr-defined]
    wait_until(field.is_displayed, "the input field on a touch screen")
    field.send_keys(text + Keys.ENTER)


def wait_until(check: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def type_line(driver: object, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, ".xterm-helper-textarea")  # type: ignore[attr-defined]
    box.send_keys(text + Keys.ENTER)


def insert_text(driver: object, text: str) -> None:
    """As an emoji picker or dictation does: text, with no key events."""
    driver.execute_cdp_cmd("Input.insertText", {"text": text})  # type: ignore[attr-defined]


async def test_a_browser_and_a_telnet_user_chat(server: ServerProcess, browser: object, tmp_path: Path) -> None:
    web_port = server.wait_event("listening")["web_port"]
    telnet = await RawClient.connect(server.port)
    await telnet.login("telly")
    await telnet.join("webroom", "telly")

    def browse() -> None:
        browser.get(f"http://127.0.0.1:{web_port}/")  # type: ignore[attr-defined]
        wait_until(lambda: "Welcome to telchat" in page_text(browser), "the greeting")
        type_line(browser, "login webby")
        wait_until(lambda: "anonymous --> webby" in page_text(browser), "the login")
        wait_until(lambda: status_text(browser, "open") == "Connected.", "the login hint gone")
        type_line(browser, "join webroom")
        wait_until(lambda: "webby joined room #webroom" in page_text(browser), "the join")
        type_line(browser, CYRILLIC)

    await asyncio.to_thread(browse)
    await telnet.read_until("*** User webby joined room #webroom")
    # Byte for byte what a telnet user gets: UTF-8, CRLF, no echo or editing residue.
    assert await telnet.read_line_bytes() == f"#webroom:webby> {CYRILLIC}\r\n".encode()

    # The server's line editor serves the page, as it serves a telnet terminal: Up recalls.
    await asyncio.to_thread(type_line, browser, "\ue013")  # Keys.UP
    assert await telnet.read_line_bytes() == f"#webroom:webby> {CYRILLIC}\r\n".encode()

    # Text inserted with no key typed (an emoji picker, dictation) reaches the server too.
    await asyncio.to_thread(insert_text, browser, "мир 🌍 ok")
    await asyncio.to_thread(type_line, browser, "")
    assert await telnet.read_line_bytes() == "#webroom:webby> мир 🌍 ok\r\n".encode()

    await telnet.send("здравствуй, браузер")
    await telnet.read_until("#webroom:telly> здравствуй, браузер")
    await asyncio.to_thread(
        wait_until, lambda: "#webroom:telly> здравствуй, браузер" in page_text(browser), "the telnet user's reply"
    )
    # A phone: no keyboard typing into the terminal, so a visible field sends the line.
    await asyncio.to_thread(send_from_touch_field, browser, "с телефона")
    assert await telnet.read_line_bytes() == "#webroom:webby> с телефона\r\n".encode()
    # Tab completes a command in the server's line editor.
    await asyncio.to_thread(type_line, browser, "joi\tside")
    await asyncio.to_thread(wait_until, lambda: "webby joined room #side" in page_text(browser), "the completed join")
    screenshot = tmp_path / "web_door.png"
    assert browser.save_screenshot(str(screenshot))  # type: ignore[attr-defined]
    print(f"screenshot: {screenshot}")
    await telnet.close()
    negotiated = server.wait_for(lambda r: r["event"] == "negotiated" and r.get("transport") == "web", "web session")
    connects = {record["conn_id"]: record for record in server.events if record["event"] == "connect"}
    assert connects[negotiated["conn_id"]]["transport"] == "web"
    assert connects[negotiated["conn_id"]]["peer"].startswith("127.0.0.1:")
    # A character-mode xterm, sized by NAWS from the page's fitted terminal.
    assert (negotiated["client_class"], negotiated["mode"], negotiated["term"]) == (
        "telnet",
        "character",
        "xterm-256color",
    )
    assert negotiated["cols"] > 80
    assert server.stop() == 0
    # The page says so, and tries again (with backoff) rather than going quiet.
    await asyncio.to_thread(
        wait_until, lambda: "Reconnecting in" in status_text(browser, "closed"), "the disconnected banner"
    )
    ends = {record["nick"]: record["transport"] for record in server.events if record["event"] == "disconnect"}
    assert ends == {"telly": "telnet", "webby": "web"}


def test_narrowing_the_page_while_typing_keeps_the_chat_above(server: ServerProcess, browser: object) -> None:
    """The server erases the rows a reflowing terminal wrapped the input line onto: the
    page's terminal must reflow the cursor's line too, or a line of chat goes instead."""
    web_port = server.wait_event("listening")["web_port"]
    browser.get(f"http://127.0.0.1:{web_port}/")  # type: ignore[attr-defined]
    wait_until(lambda: "Welcome to telchat" in page_text(browser), "the greeting")
    for line in ("login webby", "join narrow", "mark one", "mark two"):
        type_line(browser, line)
    wait_until(lambda: "#narrow:webby> mark two" in page_text(browser), "the messages")
    typing = "0123456789" * 6  # with the prompt, 69 cells: one row at 1000 px, two at 450
    insert_text(browser, typing)
    wait_until(lambda: typing in page_text(browser), "the typed line echoed")
    browser.set_window_size(450, 700)  # type: ignore[attr-defined]
    # The resize's window sizes reach the server ahead of this key, its redraw ahead of the echo.
    insert_text(browser, "Z")
    wait_until(lambda: "789Z" in page_text(browser), "the key after the resize echoed")
    assert "#narrow:webby> mark two" in page_text(browser)
