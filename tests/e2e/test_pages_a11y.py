"""Every page of the navigation, in a real browser, at desktop and phone width: named controls, one heading,
no sideways scrolling on a phone, the skip link first in the tab order, and the dark theme when the system
asks for it. (Each page's own behaviour is tested in its own module.)"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Page

from .harness import E2EServer, login

PAGES = ("/chat", "/compare", "/arena", "/leaderboard", "/debate", "/evals", "/knowledge", "/me", "/admin")

UNNAMED_CONTROLS = """() => {
  const named = (el) => {
    if (el.getAttribute('aria-label') || el.getAttribute('aria-labelledby') || el.getAttribute('title')) return true;
    if (el.labels && el.labels.length) return true;
    if ((el.tagName === 'BUTTON' || el.tagName === 'A') && el.textContent.trim()) return true;
    if (el.tagName === 'INPUT' && ['submit', 'button'].includes(el.type) && el.value) return true;
    return false;
  };
  const visible = (el) => !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length);
  return [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button, a[href]')]
    .filter((el) => visible(el) && !named(el))
    .map((el) => el.outerHTML.slice(0, 120));
}"""

OVERFLOW = """async () => {
  // Measured once the page has loaded: before its stylesheet applies, every wide table "overflows".
  if (document.readyState !== 'complete') await new Promise((r) => addEventListener('load', r, { once: true }));
  const width = document.documentElement.clientWidth;
  return [...document.querySelectorAll('body *')]
    .filter((el) => {
      const r = el.getBoundingClientRect();
      if (!r.width || r.right <= width + 1) return false;
      for (let p = el.parentElement; p; p = p.parentElement) {  // inside a scrolling box: fine
        const o = getComputedStyle(p).overflowX;
        if (o === 'auto' || o === 'scroll' || o === 'hidden') return false;
      }
      return true;
    })
    .map((el) => el.tagName + '.' + el.className + ' right=' + Math.round(el.getBoundingClientRect().right));
}"""

BACKGROUND_LUMINANCE = """() => {
  const [r, g, b] = getComputedStyle(document.body).backgroundColor.match(/\\d+/g).map(Number);
  return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255;
}"""


def _check(page: Page, path: str) -> list[str]:
    page.goto(path)
    problems: list[str] = []
    if page.locator("h1").count() != 1:
        problems.append(f"{path}: {page.locator('h1').count()} h1 elements")
    if page.evaluate("() => document.documentElement.lang") != "en":
        problems.append(f"{path}: no lang")
    unnamed: list[Any] = page.evaluate(UNNAMED_CONTROLS)
    problems += [f"{path}: control without a name: {html}" for html in unnamed]
    return problems


def test_every_page_names_its_controls_on_the_desktop(page: Page, server: E2EServer) -> None:
    login(page, server, server.admin_email, server.admin_password)
    problems = [p for path in PAGES for p in _check(page, path)]
    assert not problems, "\n".join(problems)


def test_every_page_fits_a_phone(phone_page: Page, server: E2EServer) -> None:
    login(phone_page, server, server.admin_email, server.admin_password)
    problems = []
    for path in PAGES:
        problems += _check(phone_page, path)
        wide: list[str] = phone_page.evaluate(OVERFLOW)
        problems += [f"{path}: wider than the phone: {w}" for w in wide[:5]]
    assert not problems, "\n".join(problems)


def test_the_skip_link_comes_first_and_focus_is_visible(page: Page, server: E2EServer) -> None:
    login(page, server, server.admin_email, server.admin_password)
    page.goto("/chat")
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.textContent.trim()") == "Skip to content"
    outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("", "none")
    page.keyboard.press("Enter")
    assert page.evaluate("() => document.activeElement.id") == "main"


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_theme_follows_the_system(page: Page, server: E2EServer, scheme: str) -> None:
    page.emulate_media(color_scheme="dark" if scheme == "dark" else "light")
    login(page, server, server.admin_email, server.admin_password)
    luminance: float = page.evaluate(BACKGROUND_LUMINANCE)
    assert (luminance < 0.2) if scheme == "dark" else (luminance > 0.8)


LOW_CONTRAST = """() => {
  const rgb = (s) => { const m = s.match(/[\\d.]+/g); return m ? m.map(Number) : [0, 0, 0, 0]; };
  const lum = ([r, g, b]) => {
    const f = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c.length < 4 || c[3] > 0.5) return c;
    }
    return rgb(getComputedStyle(document.body).backgroundColor);
  };
  const out = [];
  for (const el of document.querySelectorAll('main *, header *')) {
    if (!el.offsetWidth && !el.offsetHeight) continue;
    if (el.closest('svg, pre, code, del, [disabled], .sr-only')) continue;
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own) continue;
    const style = getComputedStyle(el);
    const fg = lum(rgb(style.color)), bg = lum(background(el));
    const ratio = (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
    const large = parseFloat(style.fontSize) >= 24 || (parseFloat(style.fontSize) >= 18.66 && style.fontWeight >= 700);
    const text = el.textContent.trim().slice(0, 40);
    if (ratio < (large ? 3 : 4.5)) out.push(`${el.tagName}.${el.className} ${ratio.toFixed(2)}: ${text}`);
  }
  return out;
}"""


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_text_has_enough_contrast_on_every_page(page: Page, server: E2EServer, scheme: str) -> None:
    page.emulate_media(color_scheme="dark" if scheme == "dark" else "light")
    login(page, server, server.admin_email, server.admin_password)
    problems: list[str] = []
    for path in PAGES:
        page.goto(path)
        low: list[str] = page.evaluate(LOW_CONTRAST)
        problems += [f"{path} ({scheme}): {p}" for p in low]
    assert not problems, "\n".join(problems)
