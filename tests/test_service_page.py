"""The page's server side: `/` and its files under a strict policy, the model-input preview,
the model card route, and Swagger UI and ReDoc served from the app (no CDN).
The page itself, in a real browser, is tested in test_page_browser.py."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from deployments import install, serving
from PIL import Image

from service.images import decode_image
from service.routes import docs, page

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "service" / "static"


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text inside each <script>."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_endtag(self, tag):
        self._in_script = False if tag == "script" else self._in_script

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data


def parse(html: str) -> Tags:
    tags = Tags()
    tags.feed(html)
    return tags


def png_pixels(encoded: str) -> np.ndarray:
    image = Image.open(io.BytesIO(base64.b64decode(encoded)))
    assert image.format == "PNG" and image.mode == "RGB"
    return np.asarray(image)


def photo(
    width: int, height: int, seed: int = 0, fmt: str = "JPEG", exif_orientation: int | None = None
) -> bytes:
    rng = np.random.default_rng(seed)
    # Smooth gradients plus noise: a photo-like image, not an enlargement of a 32x32 one.
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    buffer = io.BytesIO()
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        image.save(buffer, fmt, exif=exif)
    else:
        image.save(buffer, fmt)
    return buffer.getvalue()


# --- the page ------------------------------------------------------------------------------------


def test_the_page_is_served_at_the_root_under_a_strict_policy(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"  # no 'unsafe-inline', no 'unsafe-eval', no hosts
    assert directives["style-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert "unsafe" not in policy and "http" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"


def test_the_page_has_no_inline_script_and_loads_nothing_from_elsewhere(client):
    html = client.get("/").text
    tags = parse(html)
    scripts = [attrs for tag, attrs in tags.tags if tag == "script"]
    assert scripts and all(attrs.get("src", "").startswith("/static/") for attrs in scripts)
    assert all(not text.strip() for text in tags.scripts), "inline script"
    assert not any(name.startswith("on") for _, attrs in tags.tags for name in attrs), "inline handler"
    assert not any("style" in attrs for _, attrs in tags.tags), "style attribute (blocked by the CSP)"
    for tag, attrs in tags.tags:
        for name in ("src", "href"):
            if name in attrs:
                assert attrs[name].startswith(("/", "#")), f"<{tag} {name}={attrs[name]}> leaves the app"
                if attrs[name].startswith("/static/"):
                    assert client.get(attrs[name]).status_code == 200, attrs[name]


def test_static_files_name_no_other_host():
    for path in STATIC.rglob("*"):
        if path.suffix in (".html", ".css", ".js"):
            text = path.read_text()
            assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), path


def test_the_file_input_is_a_real_one(client):
    tags = parse(client.get("/").text)
    inputs = [attrs for tag, attrs in tags.tags if tag == "input" and attrs.get("type") == "file"]
    assert len(inputs) == 1 and "multiple" in inputs[0] and "hidden" not in inputs[0]
    # and shown, not display: none: test_page_browser.py checks it is displayed


def test_static_files_are_looked_up_by_name_never_joined_to_a_path(client):
    for name in ("../app.py", "..%2Fapp.py", "%2e%2e/app.py", "samples/../../app.py", "/etc/passwd", "x.py"):
        response = client.get(f"/static/{name}")
        assert response.status_code == 404, name
    assert client.get("/static/page.js").headers["content-type"].startswith("text/javascript")


def test_the_sample_photos_are_stored_once_and_the_page_serves_them(client):
    """samples/ is the page's own folder (the image ships service/ only), not a copy of it."""
    assert (ROOT / "samples").resolve() == (STATIC / "samples").resolve()
    served = sorted(p.name for p in (STATIC / "samples").glob("*.jpg"))
    assert len(served) == 6
    html = client.get("/").text
    for name in served:
        assert f'data-sample="{name}"' in html
        assert client.get(f"/static/samples/{name}").content == (ROOT / "samples" / name).read_bytes()


def test_the_page_files_are_package_data():
    """A non-editable install (the container image) must carry the page too."""
    import tomllib

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = {p for pattern in globs["service"] for p in (ROOT / "service").glob(pattern) if p.is_file()}
    assert set(page.FILES.values()) <= shipped


# --- the model-input preview -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "fmt", "orientation"),
    [(32, 32, "PNG", None), (200, 150, "JPEG", None), (96, 96, "PNG", None), (60, 40, "JPEG", 6)],
)
def test_the_preview_is_exactly_what_the_model_received(client, width, height, fmt, orientation):
    data = photo(width, height, fmt=fmt, exif_orientation=orientation)
    response = client.post("/predict/image?preview=1", files={"file": data})
    assert response.status_code == 200, response.text
    seen = png_pixels(response.json()["input_png"])
    assert seen.shape == (32, 32, 3)
    np.testing.assert_array_equal(seen, decode_image(data, (32, 32), 50_000_000))


def test_the_preview_of_each_file_comes_with_its_answer(client):
    files = [photo(32, 32, seed=s, fmt="PNG") for s in range(3)]
    body = client.post("/predict/image/cifar10?preview=true", files=[("file", f) for f in files]).json()
    for data, prediction in zip(files, body["predictions"], strict=True):
        np.testing.assert_array_equal(
            png_pixels(prediction["input_png"]), np.asarray(Image.open(io.BytesIO(data)))
        )


def test_without_preview_the_answer_has_no_image(client):
    body = client.post("/predict/image", files={"file": photo(32, 32)}).json()
    assert "input_png" not in body


def test_the_preview_is_documented(client):
    spec = client.get("/openapi.json").json()
    for path in ("/predict/image", "/predict/image/{model}"):
        parameters = {p["name"]: p for p in spec["paths"][path]["post"]["parameters"]}
        assert parameters["preview"]["schema"]["type"] == "boolean"
        assert "input_png" in parameters["preview"]["description"]
    assert "input_png" in spec["components"]["schemas"]["Prediction"]["properties"]


# --- model cards -------------------------------------------------------------------------------


@pytest.fixture
def carded(tmp_path, exports):
    root = tmp_path / "models"
    version = install(exports["cifar10"], root)
    extra = version / "assets.extra"
    (extra / "MODEL_CARD.md").write_text("# cifar10\n\n![curves](curves.png)\n")
    Image.new("RGB", (4, 4)).save(extra / "curves.png")
    (tmp_path / "secret.png").write_bytes(b"not yours")
    (extra / "linked.png").symlink_to(tmp_path / "secret.png")
    with serving(root) as client:
        yield client


def test_the_model_card_and_its_figures_are_served(carded):
    card = carded.get("/models/cifar10/card/MODEL_CARD.md")
    assert card.status_code == 200 and card.text.startswith("# cifar10")
    assert card.headers["content-type"].startswith("text/markdown")
    assert "sandbox" in card.headers["content-security-policy"]
    figure = carded.get("/models/cifar10/card/curves.png")
    assert figure.status_code == 200 and figure.headers["content-type"] == "image/png"


@pytest.mark.parametrize(
    "name", ["metadata.json", "../saved_model.pb", "..%2Fsaved_model.pb", "linked.png", "missing.png", ".png"]
)
def test_nothing_else_is_served_from_the_model_folder(carded, name):
    response = carded.get(f"/models/cifar10/card/{name}")
    assert response.status_code == 404, response.text
    assert b"not yours" not in response.content


def test_a_card_of_an_unknown_model_is_404_and_a_model_without_one_too(client):
    assert client.get("/models/nope/card/MODEL_CARD.md").status_code == 404
    assert client.get("/models/cifar10/card/MODEL_CARD.md").status_code == 404


# --- API documentation, offline ------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_documentation_pages_load_everything_from_the_app(client, path):
    response = client.get(path)
    assert response.status_code == 200
    tags = parse(response.text)
    for tag, attrs in tags.tags:
        for name in ("src", "href"):
            if name in attrs:
                assert attrs[name].startswith("/"), f"<{tag} {name}={attrs[name]}> is not served by the app"
                assert client.get(attrs[name]).status_code == 200, attrs[name]
    assert "fonts.googleapis" not in response.text and "cdn." not in response.text


def test_swagger_ui_inline_start_is_allowed_by_its_hash_only(client):
    response = client.get("/docs")
    policy = response.headers["content-security-policy"]
    assert "'unsafe-inline'" not in policy.split("script-src", 1)[1].split(";", 1)[0]
    inline = [text for text in parse(response.text).scripts if text.strip()]
    assert len(inline) == 1 and docs._policy(inline)["Content-Security-Policy"] == policy


def test_documentation_assets_are_looked_up_by_name(client):
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    for name in ("../core.py", "__init__.py", "..%2F__init__.py"):
        assert client.get(f"/docs-assets/{name}").status_code == 404, name
