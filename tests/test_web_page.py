"""The page of `translate serve` in a real headless browser: Debian's chromium, via Selenium."""

import shutil
import time

import httpx
import pytest

pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")
webdriver = pytest.importorskip(
    "selenium.webdriver", reason="needs selenium: pip install -e '.[dev]'"
)

from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from seq2seq.serve.process import ServerProcess  # noqa: E402

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromedriver: apt-get install chromium chromium-driver",
)
SENTENCE = "Ein Mann fährt mit dem Fahrrad durch die Stadt."


def headless_chromium(width=1100, height=900) -> "webdriver.Chrome":
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 f"--window-size={width},{height}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def server(decoding_checkpoint):
    with ServerProcess(["-m", str(decoding_checkpoint), "--threads", "1"]) as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    driver = headless_chromium()
    yield driver
    driver.quit()


def test_translate_in_the_page(server, browser):
    expected = httpx.post(
        f"{server.url}/v1/translate",
        json={"text": [SENTENCE], "nbest": 3, "return_attention": True},
    ).json()["translations"][0]
    wait = WebDriverWait(browser, 30)
    browser.get(server.url + "/")
    wait.until(ec.text_to_be_present_in_element((By.ID, "languages"), "de → en"))
    browser.find_element(By.ID, "source").send_keys(SENTENCE)
    nbest = browser.find_element(By.ID, "nbest")
    nbest.clear()
    nbest.send_keys("3")
    browser.find_element(By.ID, "scores").click()
    browser.find_element(By.ID, "translate").click()
    shown = wait.until(
        ec.visibility_of_element_located((By.CSS_SELECTOR, "#translations li"))
    ).text
    assert shown == expected["text"] != ""

    rows = browser.find_elements(By.CSS_SELECTOR, "#nbest-list tbody tr")
    assert [r.find_elements(By.TAG_NAME, "td")[1].text for r in rows] == [
        h["text"] for h in expected["nbest"]
    ]
    assert all(float(r.find_element(By.TAG_NAME, "td").text) < 0 for r in rows)  # log-probs

    attention = expected["attention"]
    src, tgt = attention["src_pieces"], attention["tgt_pieces"]
    cells = browser.find_elements(By.CSS_SELECTOR, "#heatmap .cell")
    assert len(cells) == len(tgt) * len(src) > 1
    assert [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#heatmap .col")] == [
        p.strip() for p in src
    ]
    # The cell of target piece 0 and source piece 1 names both and their weight.
    ActionChains(browser).move_to_element(cells[1]).perform()
    info = browser.find_element(By.ID, "cell-info").text
    assert f'"{src[1]}"' in info and f'"{tgt[0]}"' in info
    assert f"{attention['weights'][0][1]:.3f}" in info


def test_a_bad_request_shows_the_servers_message(server, browser):
    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(ec.text_to_be_present_in_element((By.ID, "languages"), "de → en"))
    browser.find_element(By.ID, "source").send_keys("Ein Hund.")
    beam = browser.find_element(By.ID, "beam")
    beam.clear()
    beam.send_keys("2")
    nbest = browser.find_element(By.ID, "nbest")
    nbest.clear()
    nbest.send_keys("3")
    browser.find_element(By.ID, "translate").click()
    error = wait.until(ec.visibility_of_element_located((By.ID, "error")))
    assert error.text.startswith("nbest: need 1 <= nbest <= beam_size")


def test_sampling_in_the_page(server, browser):
    expected = httpx.post(
        f"{server.url}/v1/translate", json={"text": [SENTENCE], "sampling": True, "seed": 3}
    ).json()["translations"][0]["text"]
    searched = httpx.post(f"{server.url}/v1/translate", json={"text": [SENTENCE]}).json()
    assert expected != searched["translations"][0]["text"]  # the page's answer tells them apart
    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(ec.text_to_be_present_in_element((By.ID, "languages"), "de → en"))
    browser.find_element(By.ID, "source").send_keys(SENTENCE)
    assert not browser.find_element(By.ID, "seed").is_enabled()
    browser.find_element(By.ID, "sample").click()
    assert not browser.find_element(By.ID, "beam").is_enabled()
    seed = browser.find_element(By.ID, "seed")
    seed.clear()
    seed.send_keys("3")
    browser.find_element(By.ID, "translate").click()
    shown = wait.until(
        ec.visibility_of_element_located((By.CSS_SELECTOR, "#translations li"))
    ).text
    assert shown == expected != ""
    assert browser.find_element(By.ID, "error").is_displayed() is False


def test_a_prefix_in_the_page(server, browser):
    text = [SENTENCE, "Zwei Hunde spielen im Schnee."]

    def api(prefix: str) -> list[str]:
        body = {"text": text, "prefix": [prefix] * 2}
        return [
            t["text"]
            for t in httpx.post(f"{server.url}/v1/translate", json=body).json()["translations"]
        ]

    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(ec.text_to_be_present_in_element((By.ID, "languages"), "de → en"))
    browser.find_element(By.ID, "source").send_keys("\n".join(text))
    # Sent as typed but for the leading spaces: a word begun ("ca") is completed, and a space
    # after a word ends it (this model's answers differ for "Two cats" and "Two cats "). Typing
    # alone translates again, once the typing pauses: only the first needs the button.
    assert api("Two cats") != api("Two cats ")
    for typed, sent, click in (("  Two ca", "Two ca", True), ("ts ", "Two cats ", False)):
        expected = api(sent)
        assert all(t.startswith(sent.strip()) for t in expected)
        browser.find_element(By.ID, "prefix").send_keys(typed)
        if click:
            browser.find_element(By.ID, "translate").click()
        wait.until(lambda b, expected=expected: [
            li.text for li in b.find_elements(By.CSS_SELECTOR, "#translations li")
        ] == expected)
        # Each line shows the typed beginning apart from the model's completion.
        shown = browser.find_elements(By.CSS_SELECTOR, "#translations li .given")
        assert [span.text for span in shown] == [sent.strip()] * 2
    # Emptied again: no prefix, the search's own translation.
    browser.find_element(By.ID, "prefix").clear()
    browser.find_element(By.ID, "translate").click()
    plain = httpx.post(f"{server.url}/v1/translate", json={"text": text}).json()
    wait.until(lambda b: [li.text for li in b.find_elements(By.CSS_SELECTOR, "#translations li")]
               == [t["text"] for t in plain["translations"]])
    assert browser.find_elements(By.CSS_SELECTOR, "#translations li .given") == []


def test_an_answer_overtaken_by_a_newer_request_is_dropped(server, browser):
    """The translator types on while an answer is on its way: the late answer, to the older
    prefix, must not replace the newer one's."""
    text = [SENTENCE]
    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(ec.text_to_be_present_in_element((By.ID, "languages"), "de → en"))
    # From now on the page's first request is answered 3 s late; later ones at once.
    browser.execute_script("""
        const fetchNow = window.fetch;
        let calls = 0;
        window.fetch = (...args) => {
          const answer = fetchNow(...args);
          if (calls++ > 0) return answer;
          return answer.then((r) => new Promise((done) => setTimeout(() => done(r), 3000)));
        };
    """)
    browser.find_element(By.ID, "source").send_keys(text[0])
    browser.find_element(By.ID, "prefix").send_keys("Two ca")
    time.sleep(1)  # the first request is sent (after the 250 ms pause) and held back
    browser.find_element(By.ID, "prefix").send_keys("ts ")
    older, newer = (
        [t["text"] for t in httpx.post(
            f"{server.url}/v1/translate", json={"text": text, "prefix": [prefix]}
        ).json()["translations"]]
        for prefix in ("Two ca", "Two cats ")
    )
    assert older != newer

    def shown(b):
        return [li.text for li in b.find_elements(By.CSS_SELECTOR, "#translations li")]

    wait.until(lambda b: shown(b) == newer)
    time.sleep(3)  # the held-back answer arrives
    assert shown(browser) == newer



def _translations(browser) -> list[tuple[str, str]]:
    """(the number the list shows, the text) of each translation on the page."""
    return [
        (li.get_attribute("value"), li.text)
        for li in browser.find_elements(By.CSS_SELECTOR, "#translations li")
    ]


def test_blank_lines_keep_the_numbers_of_the_lines_after_them(server, browser):
    text = [SENTENCE, "", "   ", "Zwei Hunde spielen im Schnee."]
    expected = httpx.post(
        f"{server.url}/v1/translate", json={"text": [text[0], text[3]]}
    ).json()["translations"]
    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(ec.text_to_be_present_in_element((By.ID, "languages"), "de → en"))
    browser.find_element(By.ID, "source").send_keys("\n".join(text))
    browser.find_element(By.ID, "translate").click()
    wait.until(lambda b: _translations(b) == [
        ("1", expected[0]["text"]), ("4", expected[1]["text"])
    ])


def _sample_with_seed(server, browser, typed: str) -> WebDriverWait:
    """Translate SENTENCE in the page by sampling, the seed typed as given."""
    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(ec.text_to_be_present_in_element((By.ID, "languages"), "de → en"))
    browser.find_element(By.ID, "source").send_keys(SENTENCE)
    browser.find_element(By.ID, "sample").click()
    seed = browser.find_element(By.ID, "seed")
    seed.clear()
    seed.send_keys(typed)
    browser.find_element(By.ID, "translate").click()
    return wait


@pytest.mark.parametrize("typed", ["123456789012345678901234567", "-0042"])
def test_a_seed_of_any_size_is_sent_as_typed(server, browser, typed):
    # Number() would round the first to 123456789012345680000000000, sent as 1.2345678901234568e+26
    expected = httpx.post(
        f"{server.url}/v1/translate",
        json={"text": [SENTENCE], "sampling": True, "seed": int(typed)},
    ).json()["translations"][0]["text"]
    wait = _sample_with_seed(server, browser, typed)
    wait.until(lambda b: _translations(b) == [("1", expected)])


def test_a_seed_that_is_no_whole_number_is_named(server, browser):
    wait = _sample_with_seed(server, browser, "1e21")
    error = wait.until(ec.visibility_of_element_located((By.ID, "error")))
    assert error.text == 'seed: must be a whole number, got "1e21"'
    assert browser.find_element(By.ID, "translate").is_enabled()


def test_a_sample_box_restored_checked_disables_the_search_options(server, browser):
    # Going back to the page, the browser loads it again and restores its form as it was left
    # (an unload handler keeps it out of the back/forward cache, which would keep the script's
    # state too).
    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(ec.text_to_be_present_in_element((By.ID, "languages"), "de → en"))
    browser.execute_script('window.addEventListener("unload", () => {})')
    browser.find_element(By.ID, "sample").click()
    browser.get(server.url + "/health")
    browser.back()
    wait.until(ec.text_to_be_present_in_element((By.ID, "languages"), "de → en"))
    assert browser.find_element(By.ID, "sample").is_selected()
    assert not browser.find_element(By.ID, "beam").is_enabled()
    assert browser.find_element(By.ID, "seed").is_enabled()
