// The admin pages: the usage filters apply as soon as they change (forms marked data-confirm ask first:
// app.js does that for every page).

function wireFilters() {
  for (const form of document.querySelectorAll("form.filters")) {
    for (const select of form.querySelectorAll("select")) {
      select.addEventListener("change", () => form.requestSubmit());
    }
  }
}

wireFilters();
