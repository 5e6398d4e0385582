"""The page at `/` and the API docs in a real headless Chromium, against the real service
(`python -m service` over the shipped models in models/) on a free port, with every host but
127.0.0.1 unreachable: what people see must match what the API answers, offline.

Needs Debian's `chromium` and `chromium-driver` (scripts/install-browser installs them) and
the `selenium` package; only the system chromedriver is used, never a downloaded one. Skipped
when the browser is missing, except in CI (CIFAR_SERVING_REQUIRE_ALL=1), where that fails.
Screenshots go to reports/screenshots/; UPDATE_DOCS_SCREENSHOT=1 also copies the desktop one
to docs/page.png, the README's picture.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from served import running_service

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
CIFAR10_TAR = ROOT.parent / "shared" / "datasets" / "cifar10-train.tar.gz"
SCREENSHOTS = ROOT / "reports" / "screenshots"
# Photos from the training archive of classes the bundled samples do not show.
PHOTOS = [f"cifar10/train/{label}/0100.jpg" for label in ("horse", "deer", "automobile", "bird")]
MAX_UPLOAD_BYTES = 2_000_000
WAIT_S = 30


pytestmark = [
    pytest.mark.required_in_ci,
    pytest.mark.server,
]  # CI installs the browser: a skip there is a failure


def chromium_paths() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or (
        "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
    )
    if not browser or not driver:
        pytest.skip("no chromium and chromedriver: run scripts/install-browser (as root)")
    return browser, driver


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """The service over the shipped models, ready."""
    if not any(MODELS.glob("*/*/saved_model.pb")):
        pytest.skip(f"no exported models in {MODELS}")
    log = tmp_path_factory.mktemp("page") / "service.log"
    with running_service(MODELS, log, MAX_UPLOAD_BYTES=str(MAX_UPLOAD_BYTES)) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium that can reach 127.0.0.1 and nothing else, logging every request."""
    binary, driver_path = chromium_paths()
    from selenium import webdriver  # a declared test dependency: missing fails, never skips

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        "--hide-scrollbars",
        # The network is gone: names resolve to nothing and everything else goes to a dead
        # proxy; loopback is never proxied, so only the service answers.
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        "--proxy-server=http://127.0.0.1:9",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    service = webdriver.ChromeService(executable_path=driver_path)  # never Selenium Manager
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """Real CIFAR-10 photos from the training archive (not in the repository), as files."""
    folder = tmp_path_factory.mktemp("photos")
    if not CIFAR10_TAR.exists():  # the bundled samples will do
        return sorted((ROOT / "samples").glob("*.jpg"))[:4]
    found = {}
    with tarfile.open(CIFAR10_TAR) as archive:
        for member in archive:
            if member.name in PHOTOS:
                found[member.name] = archive.extractfile(member).read()
                if len(found) == len(PHOTOS):
                    break
    paths = []
    for name in PHOTOS:
        path = folder / f"{Path(name).parent.name}-{Path(name).name}"
        path.write_bytes(found[name])
        paths.append(path)
    return paths


def wait(driver, condition, timeout: float = WAIT_S):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


def css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def open_page(driver, url: str):
    driver.get(url)
    wait(driver, lambda d: d.execute_script("return document.readyState") == "complete")


def upload(driver, paths: list[Path]):
    file_input = css(driver, "#file")[0]
    file_input.send_keys("\n".join(str(p) for p in paths))


def finished_results(driver, count: int):
    return wait(
        driver,
        lambda d: (
            (cards := css(d, "#results .result"))
            and len(cards) == count
            and not css(d, "#results .result[aria-busy]")
            and cards
        ),
    )


def requests_made(driver) -> dict[str, str | None]:
    """Every URL the browser asked for since the last call (DevTools' performance log), with
    why it was blocked before being sent ("csp", ...), or None."""
    urls, blocked = {}, {}
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message["params"]
        if message["method"] == "Network.requestWillBeSent":
            urls[params["requestId"]] = params["request"]["url"]
        elif message["method"] == "Network.loadingFailed":
            blocked[params["requestId"]] = params.get("blockedReason")
    return {url: blocked.get(request) for request, url in urls.items()}


def assert_stayed_local(requests: dict[str, str | None]):
    """Nothing was sent anywhere but 127.0.0.1; a request the page's own Content-Security-Policy
    stopped in the browser never left it."""
    assert requests
    for url, blocked in requests.items():
        parts = urlsplit(url)
        local = parts.scheme in ("data", "blob") or parts.hostname == "127.0.0.1"
        assert local or blocked == "csp", f"request left the machine: {url}"


def csp_violations(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]


def api_prediction(url: str, path: Path) -> dict:
    response = httpx.post(f"{url}/predict/image?preview=1", files={"file": path.read_bytes()}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


# ------------------------------------------------------------------------------------------------


def test_a_photo_shows_the_apis_label_and_ten_bars_as_wide_as_its_probabilities(browser, service, photos):
    open_page(browser, service)
    requests_made(browser)  # start the log afresh
    file_input = css(browser, "#file")[0]
    assert file_input.is_displayed() and file_input.is_enabled()  # a real, visible input
    photo = photos[0]
    upload(browser, [photo])
    (card,) = finished_results(browser, 1)
    expected = api_prediction(service, photo)

    assert card.get_attribute("class") == "result", card.text
    assert css(card, ".verdict .label")[0].text == expected["label"]
    rows = css(card, ".bars li")
    assert len(rows) == 10
    shown = [(r.get_attribute("data-label"), float(r.get_attribute("data-probability"))) for r in rows]
    assert shown == sorted(expected["probabilities"].items(), key=lambda item: -item[1])
    for row in rows:
        probability = float(row.get_attribute("data-probability"))
        track = css(row, ".track")[0].rect["width"]
        bar = css(row, ".bar")[0].rect["width"]
        assert track > 50
        assert bar / track == pytest.approx(probability, abs=1.5 / track), row.text
        assert css(row, ".value")[0].text == f"{100 * probability:.1f}%" or probability < 0.001
    assert f"{expected['model']} version {expected['version']}" in css(card, ".meta")[0].text
    assert " ms round trip" in css(card, ".meta")[0].text

    # What the model saw is the API's own preview of the same file, 32x32.
    seen = css(card, "img.input")[0]
    assert seen.get_attribute("src") == f"data:image/png;base64,{expected['input_png']}"
    assert browser.execute_script("return arguments[0].naturalWidth", seen) == 32
    assert_stayed_local(requests_made(browser))
    assert not csp_violations(browser)


def screenshot(driver, name: str, full_page: bool = False):
    """Save the window, or the whole page at the window's width, under reports/screenshots/."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    size = driver.get_window_size()
    if full_page:
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(size["width"], min(height + 140, 4000))  # + the window's own frame
    try:
        driver.save_screenshot(str(SCREENSHOTS / name))
    finally:
        driver.set_window_size(size["width"], size["height"])
    return SCREENSHOTS / name


def test_several_photos_show_as_a_grid_of_results(browser, service, photos):
    open_page(browser, service)
    shown = photos[:3]
    upload(browser, shown)
    cards = finished_results(browser, len(shown))
    for card, photo in zip(cards, shown, strict=True):
        assert css(card, "h3")[0].text == photo.name
        assert css(card, ".verdict .label")[0].text == api_prediction(service, photo)["label"]
        assert len(css(card, ".bars li")) == 10
    tops = {round(card.rect["y"]) for card in cards}
    assert len(tops) < len(cards), "results are side by side on a wide screen"
    desktop = screenshot(browser, "page-desktop.png", full_page=True)
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(desktop, ROOT / "docs" / "page.png")


def test_a_sample_photo_is_one_click_away(browser, service):
    open_page(browser, service)
    button = css(browser, '[data-sample="cat.jpg"]')[0]
    button.click()
    (card,) = finished_results(browser, 1)
    expected = api_prediction(service, ROOT / "samples" / "cat.jpg")
    assert css(card, ".verdict .label")[0].text == expected["label"]


def test_on_a_phone_the_page_fits_the_screen(browser, service, photos):
    browser.set_window_size(390, 1400)
    try:
        open_page(browser, service)
        upload(browser, photos[:2])
        cards = finished_results(browser, 2)
        width = browser.execute_script("return document.documentElement.clientWidth")
        assert browser.execute_script("return document.documentElement.scrollWidth") <= width
        assert cards[1].rect["y"] > cards[0].rect["y"] + cards[0].rect["height"] - 1  # one column
        screenshot(browser, "page-phone.png")
    finally:
        browser.set_window_size(1280, 1000)


def test_a_text_file_named_jpg_shows_the_services_415_message(browser, service, tmp_path):
    fake = tmp_path / "notes.jpg"
    fake.write_text("these are notes, not a photo\n")
    refusal = httpx.post(f"{service}/predict/image", files={"file": fake.read_bytes()}, timeout=30)
    assert refusal.status_code == 415
    open_page(browser, service)
    upload(browser, [fake])
    (card,) = finished_results(browser, 1)
    assert "failed" in card.get_attribute("class")
    message = css(card, ".error")[0].text
    assert message.startswith("Not a file type the service accepts")
    assert refusal.json()["detail"] in message


def test_a_file_over_the_upload_limit_shows_the_413_message(browser, service, tmp_path):
    big = tmp_path / "huge.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(MAX_UPLOAD_BYTES + 1000))
    open_page(browser, service)
    upload(browser, [big])
    (card,) = finished_results(browser, 1)
    message = css(card, ".error")[0].text
    assert message.startswith("Too large for the service") and f"over {MAX_UPLOAD_BYTES} bytes" in message


def test_a_bad_file_among_good_ones_fails_alone(browser, service, photos, tmp_path):
    fake = tmp_path / "slides.jpg"
    fake.write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj << >> endobj\n")
    open_page(browser, service)
    upload(browser, [photos[0], fake])
    good, bad = finished_results(browser, 2)
    assert len(css(good, ".bars li")) == 10
    assert "not an image in an accepted format" in css(bad, ".error")[0].text


def test_the_iris_tab_classifies_a_real_flower_and_shows_the_services_errors(browser, service):
    from selenium.webdriver.common.keys import Keys

    open_page(browser, service)
    tab = css(browser, "#tab-features")[0]
    wait(browser, lambda d: len(css(d, "#features-fields input")) == 4)  # built from /models
    # Keyboard only: from the Image tab, the right arrow moves to the next tab.
    css(browser, "#tab-image")[0].send_keys(Keys.ARROW_RIGHT)
    assert tab.get_attribute("aria-selected") == "true" and css(browser, "#panel-features")[0].is_displayed()
    fields = {f.get_attribute("name"): f for f in css(browser, "#features-fields input")}
    assert list(fields) == ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    flower = {name: float(field.get_attribute("value")) for name, field in fields.items()}
    assert flower == {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
    assert "(cm)" in css(browser, 'label[for="feature-sepal_length"]')[0].text

    expected = httpx.post(f"{service}/predict/iris", json=flower, timeout=30).json()
    fields["petal_width"].send_keys(Keys.ENTER)  # submits the form
    result = wait(browser, lambda d: css(d, "#features-result .result"))[0]
    assert css(result, ".verdict .label")[0].text == expected["label"] == "setosa"
    rows = css(result, ".bars li")
    assert [r.get_attribute("data-label") for r in rows] == sorted(
        expected["probabilities"], key=lambda label: -expected["probabilities"][label]
    )
    screenshot(browser, "page-iris.png")

    # An empty field goes to the service as null; its own message appears beside that field.
    refusal = httpx.post(f"{service}/predict/iris", json={**flower, "petal_length": None}, timeout=30)
    assert refusal.status_code == 422
    (said,) = [part for part in refusal.json()["detail"].split("; ") if part.startswith("petal_length: ")]
    fields["petal_length"].clear()
    css(browser, "#features-submit")[0].click()
    error = wait(browser, lambda d: (t := css(d, "#feature-petal_length-error")[0].text) and t)
    assert error == said
    assert fields["petal_length"].get_attribute("aria-invalid") == "true"
    assert css(browser, "#features-error")[0].text == ""  # said beside the field, not in general
    assert not css(browser, "#features-result .result")


def test_the_models_panel_shows_what_models_says(browser, service):
    open_page(browser, service)
    css(browser, "#tab-models")[0].click()
    models = httpx.get(f"{service}/models", timeout=10).json()["models"]
    sections = wait(
        browser, lambda d: len(css(d, "#models .model")) == len(models) and css(d, "#models .model")
    )
    for section, model in zip(sections, models, strict=True):
        assert section.get_attribute("data-model") == model["name"]
        assert model["live_version"] in section.text
        accuracy = model["metrics"].get("validation", {}).get("accuracy")
        if accuracy is not None:
            assert f"{accuracy:.4g}" in section.text
    calibrated = [(s, m) for s, m in zip(sections, models, strict=True) if m["temperature"] is not None]
    assert calibrated, "the shipped models are calibrated: /models gives their temperature"
    for section, model in calibrated:
        assert "Calibration" in section.text
        assert f"temperature\n{model['temperature']:.4g}" in section.text
        assert f"validation ECE\n{model['validation_ece']:.4g}" in section.text
    assert css(browser, "#readiness")[0].get_attribute("data-ready") == "true"
    screenshot(browser, "page-models.png", full_page=True)


def test_the_api_docs_render_with_no_network(browser, service):
    spec = httpx.get(f"{service}/openapi.json", timeout=10).json()
    operations = sum(len(methods) for methods in spec["paths"].values())
    requests_made(browser)
    open_page(browser, f"{service}/docs")
    blocks = wait(browser, lambda d: len(css(d, ".opblock")) >= operations and css(d, ".opblock"))
    assert any("/predict/image" in block.text for block in blocks)
    # Markdown in the API's description is rendered, not shown as typed.
    assert "`" not in css(browser, ".information-container")[0].text
    assert css(browser, ".information-container code")
    screenshot(browser, "docs-offline.png")

    assert not csp_violations(browser)

    open_page(browser, f"{service}/redoc")
    wait(browser, lambda d: "Classify uploaded images" in d.find_element("tag name", "body").text)
    assert_stayed_local(requests_made(browser))
    # ReDoc always asks for Redocly's logo from its CDN (and hides it when that fails); the
    # policy of /redoc stops that request in the browser, the only violation allowed.
    assert all("cdn.redoc.ly/redoc/logo-mini.svg" in message for message in csp_violations(browser))


def test_while_the_model_is_not_ready_the_page_says_so(browser, photos, tmp_path):
    broken = tmp_path / "models" / "cifar10" / "1"
    broken.mkdir(parents=True)  # a version folder with no SavedModel in it: never becomes ready
    log = tmp_path / "service.log"
    with running_service(
        tmp_path / "models", log, ready=False, MAX_UPLOAD_BYTES=str(MAX_UPLOAD_BYTES)
    ) as url:
        refusal = httpx.post(f"{url}/predict/image", files={"file": photos[0].read_bytes()}, timeout=30)
        assert refusal.status_code == 503
        open_page(browser, url)
        badge = wait(browser, lambda d: css(d, '#readiness[data-ready="false"]'))[0]
        assert badge.text.startswith("Not ready: cifar10:")
        upload(browser, [photos[0]])
        (card,) = finished_results(browser, 1)
        message = css(card, ".error")[0].text
        assert message.startswith("The model is not ready yet") and refusal.json()["detail"] in message


@pytest.mark.parametrize("gesture", ["drop", "paste"])
def test_a_dropped_or_pasted_photo_is_classified(browser, service, gesture):
    """Selenium cannot drag a file from the desktop or use the clipboard: the browser's own
    drop and paste events carry a real File here, as they would from a person."""
    open_page(browser, service)
    browser.execute_async_script(
        """
        const [gesture, done] = arguments;
        const blob = await (await fetch("/static/samples/dog.jpg")).blob();
        const files = new DataTransfer();
        files.items.add(new File([blob], "dropped-dog.jpg", { type: "image/jpeg" }));
        const event = gesture === "drop"
          ? new DragEvent("drop", { dataTransfer: files, bubbles: true, cancelable: true })
          : new ClipboardEvent("paste", { clipboardData: files, bubbles: true, cancelable: true });
        (gesture === "drop" ? document.getElementById("drop") : document.body).dispatchEvent(event);
        done();
        """,
        gesture,
    )
    (card,) = finished_results(browser, 1)
    assert css(card, "h3")[0].text == "dropped-dog.jpg"
    assert (
        css(card, ".verdict .label")[0].text == api_prediction(service, ROOT / "samples" / "dog.jpg")["label"]
    )
